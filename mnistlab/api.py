"""The Python API: train, load and use runs from a notebook or a script.

    import mnistlab as ml
    run = ml.train("quick", dataset="mnist-5k", epochs=1)   # recipe name/file or TrainConfig
    run.evaluate("test")["accuracy"]                          # as `mnistlab eval --json`
    run.predict(images)   # paths, bytes, PIL images or MNIST-layout arrays -> Predictions
    run = ml.load_run("runs/NAME");  run.history             # per-epoch records

A ``Run`` is a view of a run directory: everything it returns is read from the files the
training wrote (config.json, run.json, metrics.jsonl, checkpoints), so a run trained by
the CLI and one trained here are the same thing.
"""

from __future__ import annotations

import socket
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .config import TrainConfig, build_config
from .errors import CheckpointError, ConfigError
from .run import RUNNING, process_alive, read_records, read_run_info, saved_config

__all__ = ["Run", "train", "load_run", "list_runs"]


def train(recipe: str | Path | TrainConfig | None = None, /, *, resume: str | Path | None = None,
          log: Any = print, **overrides: Any) -> Run:
    """Train and return the ``Run``. ``recipe``: a recipe name (`mnistlab recipes`), a TOML
    or JSON file, a run directory to reproduce, or a TrainConfig; ``overrides``: any config
    field (``epochs=3, lr=0.01``). ``resume``: continue that run directory instead."""
    from .training import resume_config
    from .training import train as _train

    if resume is not None:
        if recipe is not None:
            raise ConfigError("resume: a resumed run keeps its own config; pass no recipe")
        cfg = resume_config(resume, overrides)
    elif isinstance(recipe, TrainConfig):
        cfg = recipe.replace(**overrides) if overrides else recipe
    else:
        cfg = build_config(str(recipe) if recipe is not None else None, overrides)
    return Run(_train(cfg, resume=resume, log=log))


def load_run(path: str | Path) -> Run:
    """The run in directory ``path`` (CheckpointError if it is not a run directory)."""
    path = Path(path)
    if not (path / "config.json").is_file() and not (path / "checkpoints").is_dir():
        raise CheckpointError(f"{path}: not a mnistlab run directory (no config.json)")
    return Run(path)


def list_runs(runs_dir: str | Path = "runs") -> list[Run]:
    """Every run directory directly under ``runs_dir``, oldest first."""
    root = Path(runs_dir)
    if not root.is_dir():
        raise ConfigError(f"runs_dir: {root} is not a folder")
    # trained runs have a config.json; ensembles (`mnistlab ensemble`) only a run.json
    found = {p: p / "config.json" if (p / "config.json").is_file() else p / "run.json"
             for p in root.iterdir() if p.is_dir()}
    found = {p: f for p, f in found.items() if f.is_file()}
    return [Run(p) for p in sorted(found, key=lambda p: found[p].stat().st_mtime)]


class Run:
    """A run directory: its config, history, checkpoints, evaluation and predictions."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # --- what training wrote

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def config(self) -> TrainConfig:
        return saved_config(self.path)

    @property
    def info(self) -> dict[str, Any]:
        """run.json: status, command, times, hardware, provenance."""
        return read_run_info(self.path)

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per epoch: epoch, train_loss, train_acc, val_loss, val_acc, lr,
        seconds, images_per_s."""
        return [r for r in read_records(self.path / "metrics.jsonl") if r["type"] == "epoch"]

    @property
    def steps(self) -> list[dict[str, Any]]:
        """The step records (every ``log_every`` steps): loss, acc, lr, images_per_s."""
        return [r for r in read_records(self.path / "metrics.jsonl") if r["type"] == "step"]

    @property
    def status(self) -> str:
        """finished, running, stopped (its process is gone), failed, diverged, interrupted."""
        info = self.info
        status = info.get("status", "unknown")
        pid = info.get("pid")
        if (status == RUNNING and info.get("host") == socket.gethostname()
                and isinstance(pid, int) and not process_alive(pid)):
            return "stopped"
        return status

    def checkpoint(self, which: str = "best", device: str = "cpu"):
        """The loaded checkpoint (model and metadata): ``best`` or ``last``."""
        from .checkpoint import load_checkpoint

        return load_checkpoint(self.path, which=which, device=device)

    # --- using the model

    def evaluate(self, split: str = "test", *, which: str = "best",
                 dataset: str | None = None) -> dict[str, Any]:
        """Metrics of the ``which`` checkpoint on ``split``, as `mnistlab eval --json`
        prints them (accuracy, loss, ece, macro_f1, per_class, confused_pairs, n)."""
        from .evaluate import evaluate

        ev = evaluate(self.path, split, which=which, dataset=dataset)
        return {k: v for k, v in ev.metrics.items() if k != "confusion"}

    @cached_property
    def predictor(self):
        from .predict import Predictor

        return Predictor.load(self.path)

    def predict(self, images: Any, *, top_k: int | None = None) -> list:
        """Predictions (``predict.Prediction``: label, confidence, unsure, top_k, ...), one
        per image. ``images``: a path, bytes, a PIL image or an array, or a list of them;
        arrays are (28, 28) or (N, 28, 28) in the MNIST layout (ink high on black), uint8
        0..255 or float 0..1, and skip the user-image preprocessing. Anything else (files,
        bytes, PIL) is prepared as `mnistlab predict` prepares it."""
        from .predict import as_mnist_arrays

        items = images if isinstance(images, (list, tuple)) else [images]
        batches: list[np.ndarray] = []
        for item in items:
            if isinstance(item, np.ndarray) or type(item).__module__.startswith("torch"):
                batches.append(as_mnist_arrays(np.asarray(item)))
            else:
                batches.append(self.predictor.preprocess(item)[None])
        if not batches:
            return []
        return self.predictor.predict_arrays(np.concatenate(batches), top_k=top_k)

    def report(self) -> Path:
        """Re-evaluate and rewrite plots and report.md; returns its path."""
        from .report import write_report

        eval_test = self.config.eval_test if (self.path / "config.json").is_file() else True
        return write_report(self.path, eval_test=eval_test, log=lambda *_: None)

    # --- one row of `mnistlab runs`

    def summary(self) -> dict[str, Any]:
        """Status, model, dataset, parameters, validation and test accuracy, ECE, time."""
        from .checkpoint import read_meta, resolve

        info = self.info
        row: dict[str, Any] = {"name": self.name, "status": self.status,
                               "model": info.get("model"), "dataset": info.get("dataset"),
                               "parameters": info.get("parameters"),
                               "epochs": info.get("epochs_done") or len(self.history),
                               "seconds": info.get("train_seconds"), "val_acc": None,
                               "test_acc": None, "ece": None, "path": str(self.path)}
        try:
            cfg = self.config
            row["model"], row["dataset"] = cfg.model, cfg.dataset
        except ConfigError:
            pass
        try:
            meta = read_meta(resolve(self.path))
            row["val_acc"] = meta.get("metrics", {}).get("val_acc")
        except CheckpointError:
            pass
        for split in ("test", "val"):
            metrics = _read_json(self.path / f"eval_{split}.json")
            if metrics:
                row.setdefault("ece_split", split)
                row["ece"] = row["ece"] if row["ece"] is not None else metrics.get("ece")
                if split == "test":
                    row["test_acc"] = metrics.get("accuracy")
        if row["seconds"] is None and self.history:
            row["seconds"] = sum(r["seconds"] for r in self.history)
        return row


def _read_json(path: Path) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
