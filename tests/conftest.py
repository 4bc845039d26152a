"""Shared pytest fixtures. Each section belongs to the module(s) named in its banner."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

# ==============================================================================================
# predict / serve (tests/test_predict.py, test_serve.py, test_browser.py): a trained model
# ==============================================================================================

TRAINED_MIN_ACCURACY = 0.97  # on full MNIST; mnist-5k (offline) cannot reach it with an MLP


def _train_small_mlp(run_dir: Path) -> dict:
    """~900 Adam steps of a 784-256-10 MLP (about 6 s on one core) -> run_dir/checkpoints/best.

    Full MNIST when MNISTLAB_DATA_DIR is set, else the offline mnist-5k. One thread: on a
    shared 2-core machine, single-threaded small matmuls are faster than contended ones.
    """
    import torch
    import torch.nn.functional as F

    from mnistlab import data
    from mnistlab.checkpoint import base_meta, save_checkpoint
    from mnistlab.models import create_model

    name = "mnist" if os.environ.get("MNISTLAB_DATA_DIR") else "mnist-5k"
    train, val = data.load(name, "train"), data.load(name, "val")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(0)

        def norm(images: np.ndarray) -> torch.Tensor:  # (N, 28, 28) uint8 -> (N, 1, 28, 28)
            x = torch.from_numpy(images).float().div_(255)
            return ((x - train.mean) / train.std).unsqueeze(1)

        x, y = norm(train.images), torch.from_numpy(train.labels)
        model = create_model("mlp", num_classes=len(train.classes), hidden=[256])
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        steps, batch = 900, 256
        t0, step = time.perf_counter(), 0
        model.train()
        while step < steps:
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x) - batch + 1, batch):
                idx = perm[i : i + batch]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if step == steps:
                    break
        model.eval()
        with torch.inference_mode():
            val_acc = float((model(norm(val.images)).argmax(1).numpy() == val.labels).mean())
        meta = base_meta(
            engine="torch",
            model="mlp",
            model_args=model.config,
            classes=list(train.classes),
            normalization={"mean": train.mean, "std": train.std},
            dataset=name,
            seed=0,
            epoch=step * batch // len(x),
            step=step,
            metrics={"val_accuracy": val_acc, "train_seconds": time.perf_counter() - t0},
        )
        save_checkpoint(run_dir / "checkpoints" / "best", model, meta)
        return meta
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding ``checkpoints/best``: a small MLP trained once per session."""
    run_dir = tmp_path_factory.mktemp("trained-run")
    _train_small_mlp(run_dir)
    return run_dir


# ==============================================================================================
# end of predict / serve section
# ==============================================================================================
