"""Checkpoints: self-describing, atomic, verified, never unpickled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mnistlab.checkpoint import CheckpointError, base_meta, load_checkpoint, save_checkpoint
from mnistlab.models import create_model


def _save(tmp_path: Path, name: str = "fast-cnn", **state) -> Path:
    torch.manual_seed(0)
    model = create_model(name)
    meta = base_meta(model=name, model_args=model.config, classes=[str(i) for i in range(10)],
                     normalization={"mean": 0.1307, "std": 0.3081}, dataset="mnist")
    save_checkpoint(tmp_path / "checkpoints" / "best", model, meta, train_state=state or None)
    return tmp_path


def test_round_trip_rebuilds_the_model_from_metadata(tmp_path: Path) -> None:
    run = _save(tmp_path, epoch=3, rng=torch.get_rng_state(), nested={1: [torch.ones(2), 0.5]})
    ck = load_checkpoint(run, with_train_state=True)
    fresh = create_model("fast-cnn")
    torch.manual_seed(0)
    original = create_model("fast-cnn")
    assert all(torch.equal(v, ck.model.state_dict()[k]) for k, v in original.state_dict().items())
    assert not torch.equal(fresh.head.weight, ck.model.head.weight)
    st = ck.meta["train_state"]
    assert st["epoch"] == 3 and torch.equal(st["nested"][1][0], torch.ones(2))
    assert ck.meta["versions"]["torch"] == torch.__version__
    # every path form resolves to the same checkpoint
    json_path = run / "checkpoints" / "best.json"
    weights = run / "checkpoints" / ck.meta["weights"]["file"]
    for p in (run, json_path, run / "checkpoints" / "best", weights):
        assert load_checkpoint(p).path == json_path


def test_resaving_leaves_one_consistent_set_of_files(tmp_path: Path) -> None:
    _save(tmp_path, epoch=1)
    _save(tmp_path, epoch=2)
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert len(files) == 3 and "best.json" in files  # json + weights + state, no leftovers


def test_damaged_or_foreign_checkpoints_are_refused(tmp_path: Path) -> None:
    run = _save(tmp_path)
    ck_dir = run / "checkpoints"
    meta = json.loads((ck_dir / "best.json").read_text())
    weights = ck_dir / meta["weights"]["file"]

    original = weights.read_bytes()
    data = bytearray(original)
    data[-5] ^= 0xFF  # one flipped bit pattern in the weights
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_checkpoint(run)
    weights.write_bytes(original)

    (ck_dir / "best.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable checkpoint metadata"):
        load_checkpoint(run)

    (ck_dir / "best.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a mnistlab checkpoint"):
        load_checkpoint(run)

    (ck_dir / "best.json").write_text(json.dumps({**meta, "model": "resnet50"}))
    with pytest.raises(CheckpointError, match="unknown model 'resnet50'"):
        load_checkpoint(run)

    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    run = _save(tmp_path, "fast-cnn")
    meta_path = run / "checkpoints" / "best.json"
    meta = json.loads(meta_path.read_text())
    meta["model"], meta["model_args"] = "lenet5", {"num_classes": 10}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="weights do not fit model 'lenet5'"):
        load_checkpoint(run)


def test_a_pickle_is_never_loaded(tmp_path: Path) -> None:
    """A torch.save pickle dressed as weights is refused before anything is unpickled."""
    run = _save(tmp_path)
    meta = json.loads((run / "checkpoints" / "best.json").read_text())
    target = run / "checkpoints" / meta["weights"]["file"]
    torch.save({"x": torch.ones(1)}, target)
    with pytest.raises(CheckpointError):
        load_checkpoint(run)
