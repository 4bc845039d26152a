"""Shared pytest fixtures. Each section belongs to the module(s) named in its banner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# ==============================================================================================
# predict / serve (tests/test_predict.py, test_serve.py, test_browser.py): a trained model
# ==============================================================================================

def _train_small_mlp(run_dir: Path) -> Path:
    """A 784-256-10 MLP, ~860 Adam steps through the real training loop (a few seconds on
    one core): full MNIST when MNISTLAB_DATA_DIR is set, else the offline mnist-5k."""
    from mnistlab.config import TrainConfig
    from mnistlab.training import train

    dataset = "mnist" if os.environ.get("MNISTLAB_DATA_DIR") else "mnist-5k"
    cfg = TrainConfig(dataset=dataset, model="mlp", model_args={"hidden": [256]}, epochs=4,
                      batch_size=256, lr=2e-3, threads=1, progress=False, eval_test=False,
                      runs_dir=str(run_dir.parent), name=run_dir.name)
    return train(cfg, log=lambda *_: None)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding ``checkpoints/best``: a small MLP trained once per session."""
    return _train_small_mlp(tmp_path_factory.mktemp("trained-run"))


# ==============================================================================================
# end of predict / serve section
# ==============================================================================================


# ==============================================================================================
# data (tests/test_data*.py): no real data directory leaks in; a tiny registered dataset
# ==============================================================================================

@pytest.fixture
def data_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No env var, a private per-user cache, no system dirs (use with ``usefixtures``)."""
    from mnistlab import data

    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data.fetch, "SYSTEM_DIRS", ())


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch):
    """The tiny fixture dataset of helpers_data, registered under its name for the test."""
    from helpers_data import make_tiny

    from mnistlab import data

    t = make_tiny()
    monkeypatch.setitem(data.REGISTRY, t.spec.name, t.spec)
    return t

# ==============================================================================================
# end of data section
# ==============================================================================================


# ==============================================================================================
# compress / export (tests/test_compress.py, test_export.py): small runs on mnist-5k
# ==============================================================================================

def _train_5k(runs: Path, name: str, model: str, model_args: dict, epochs: int, lr: float) -> Path:
    from mnistlab.config import TrainConfig
    from mnistlab.training import train

    cfg = TrainConfig(dataset="mnist-5k", model=model, model_args=model_args, epochs=epochs,
                      batch_size=128, lr=lr, schedule="onecycle", threads=1, progress=False,
                      eval_test=False, runs_dir=str(runs), name=name)
    return train(cfg, log=lambda *_: None)


@pytest.fixture(scope="session")
def runs_5k(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Runs trained once per session on the offline mnist-5k (~10 s on one core together):
    ``mlp`` (784-128-10), ``cnn`` (fast-cnn 8-16, dense 64) and ``numpy`` (numpy-mlp)."""
    from mnistlab.config import TrainConfig
    from mnistlab.training import train

    runs = tmp_path_factory.mktemp("runs-5k")
    out = {"mlp": _train_5k(runs, "mlp", "mlp", {"hidden": [128]}, 5, 2e-3),
           "cnn": _train_5k(runs, "cnn", "fast-cnn", {"widths": [8, 16], "dense": 64}, 4, 1e-2)}
    cfg = TrainConfig(dataset="mnist-5k", model="numpy-mlp", epochs=1, progress=False,
                      eval_test=False, runs_dir=str(runs), name="numpy")
    out["numpy"] = train(cfg, log=lambda *_: None)
    return out


# ==============================================================================================
# end of compress / export section
# ==============================================================================================
