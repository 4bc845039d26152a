"""Ensembles: trained runs' probabilities averaged, as a run directory of its own.

    mnistlab ensemble RUN RUN ... --name NAME [--runs-dir DIR]

    runs/NAME/checkpoints/best.*    an "ensemble" checkpoint (engines/ensemble_engine.py):
                                    `eval`, `predict`, `serve` and the API take it as any run
    runs/NAME/run.json              status, command, the members (run, model, accuracies)
    runs/NAME/eval_val.json, eval_test.json, plots/, report.md   as a trained run has them

Each member's probabilities are taken at its calibration temperature
(``calibration.temperature`` in its checkpoint, 1 when it was never calibrated) and the
ensemble predicts their mean. Members must predict the same classes of the same dataset
with the same normalization; anything else is refused, naming the run. The ensemble is
evaluated on validation (when the members share their validation split: train them with
one ``--split-seed``; otherwise each member trained on digits another one validates on,
and only the test split is fair) and on test. Nothing is chosen on the test split here:
which runs join is the caller's choice, best made on validation.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint, atomic_write_json, base_meta, load_checkpoint, save_checkpoint
from .engines import get_engine
from .engines.ensemble_engine import EnsembleModel, Member
from .errors import ConfigError
from .run import FINISHED, command_line, has_checkpoint

__all__ = ["create_ensemble"]


def create_ensemble(runs: Sequence[str | Path], *, name: str, runs_dir: str | Path = "runs",
                    which: str = "best", log: Callable[[str], None] = print) -> Path:
    """Make the ensemble of ``runs`` (their ``which`` checkpoints) in ``runs_dir/name``,
    evaluate it and write its report; returns its run directory."""
    if len(runs) < 2:
        raise ConfigError("ensemble: give at least two runs")
    if not name or "/" in name or name in (".", ".."):
        raise ConfigError(f"name: must be a plain folder name, got {name!r}")
    path = Path(runs_dir) / name
    if has_checkpoint(path):
        raise ConfigError(f"name: {path} already holds a checkpoint; choose another --name")
    cks = [load_checkpoint(r, which=which) for r in runs]

    # --- members must predict the same thing, the same way
    first, first_run = cks[0], runs[0]
    for run, ck in zip(runs, cks):
        if ck.engine == "ensemble":
            raise ConfigError(f"ensemble: {run} is itself an ensemble; give its member runs")
        if ck.classes != first.classes:
            raise ConfigError(f"ensemble: {run} predicts classes {ck.classes}, but {first_run} "
                              f"predicts {first.classes}: members must share their classes")
        if ck.meta.get("dataset") != first.meta.get("dataset"):
            raise ConfigError(f"ensemble: {run} was trained on {ck.meta.get('dataset')!r} but "
                              f"{first_run} on {first.meta.get('dataset')!r}: members must "
                              "share their dataset")
        if ck.meta["normalization"] != first.meta["normalization"]:
            raise ConfigError(f"ensemble: {run} normalizes its input differently from "
                              f"{first_run} ({ck.meta['normalization']} vs "
                              f"{first.meta['normalization']})")
    splits = [{k: ck.meta.get("split", {}).get(k, -1 if k == "val_size" else 0)
               for k in ("val_size", "seed")} for ck in cks]
    shared = all(s == splits[0] for s in splits)
    if not shared:
        log(f"note: the members hold out different validation splits ({_seeds(splits)}); the "
            "ensemble is evaluated on the test split only")

    # --- the ensemble: the members' specs and models, behind the ensemble engine
    members = []
    for run, ck in zip(runs, cks):
        blob = get_engine(ck.engine).weights_bytes(ck.model)
        spec = {"run": str(run), "engine": ck.engine, "model": ck.meta["model"],
                "model_args": ck.meta["model_args"], "temperature": ck.temperature,
                "sha256": hashlib.sha256(blob).hexdigest(), "seed": ck.meta.get("seed"),
                "val_acc": (ck.meta.get("metrics") or {}).get("val_acc")}
        if ck.meta.get("adapter"):
            spec["adapter"] = ck.meta["adapter"]
        members.append(Member(spec, ck.model))
    model = EnsembleModel(members)
    split = {**splits[0], **({} if shared else {"seed": None})}
    split["labels_per_class"] = 0
    if first.meta.get("split", {}).get("data_dir"):
        split["data_dir"] = first.meta["split"]["data_dir"]
    meta = base_meta(engine="ensemble", model="ensemble", model_args={"members": [
        m.spec for m in members]}, classes=first.classes,
        normalization=first.meta["normalization"], dataset=first.meta["dataset"],
        split=split, seed=None)
    if shared:  # the validation score `mnistlab runs` shows, as for a trained run
        from .evaluate import evaluate

        ev = evaluate(Checkpoint(model, meta, path / "checkpoints" / "best.json"), "val")
        meta["metrics"] = {"val_acc": ev.metrics["accuracy"], "val_loss": ev.metrics["loss"]}

    # --- the run directory: checkpoint, run.json, then evaluation and report
    save_checkpoint(path / "checkpoints" / "best", model, meta)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    engine = get_engine("ensemble")
    atomic_write_json(path / "run.json", {
        "status": FINISHED, "engine": "ensemble", "model": "ensemble",
        "dataset": first.meta["dataset"], "command": command_line(), "started": now,
        "finished": now, "host": socket.gethostname(),
        "parameters": engine.num_parameters(model), "train_seconds": 0.0,
        "members": [{"run": str(run), "model": ck.meta["model"],
                     "temperature": ck.temperature, "seed": ck.meta.get("seed"),
                     "val_acc": (ck.meta.get("metrics") or {}).get("val_acc"),
                     "test_acc": _test_accuracy(run)} for run, ck in zip(runs, cks)]})
    from .report import write_report

    write_report(path, eval_test=True, log=log)
    return path


def _seeds(splits: list[dict[str, Any]]) -> str:
    return ", ".join(f"seed {s['seed']}" for s in splits)


def _test_accuracy(run: str | Path) -> float | None:
    """A member's test accuracy from its own report (eval_test.json), if it has one."""
    p = Path(run)
    p = p if p.is_dir() else p.parent.parent
    try:
        return float(json.loads((p / "eval_test.json").read_text())["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
