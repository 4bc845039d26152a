"""Evaluation: accuracy, loss, per-class precision/recall/F1, confusions, calibration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import data as data_mod
from .checkpoint import Checkpoint, load_checkpoint
from .engines import get_engine
from .errors import DataError


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    checkpoint: Checkpoint
    dataset: data_mod.Dataset
    logits: np.ndarray  # (N, C)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)  # log-sum-exp shift: no overflow
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def temperature_of(ck: Checkpoint) -> float | None:
    """The checkpoint's fitted temperature (``mnistlab calibrate``), or None."""
    return ck.temperature if ck.meta.get("calibration") else None


def probabilities(logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
    """Class probabilities (N, C): softmax(logits / T), T = 1 when there is none."""
    return softmax(np.asarray(logits, np.float64) / (temperature or 1.0))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list[dict]:
    """Equal-width bins of the top probability: each bin's range, count, mean confidence
    and accuracy (0 for an empty bin)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(m.sum()),
                    "confidence": float(conf[m].mean()) if m.any() else 0.0,
                    "accuracy": float(correct[m].mean()) if m.any() else 0.0})
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    n = max(1, len(labels))
    return float(sum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(probs, labels, bins)))


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def compute_metrics(logits: np.ndarray, labels: np.ndarray, classes: list[str] | tuple[str, ...],
                    top_pairs: int = 10, temperature: float | None = None) -> dict[str, Any]:
    """Metrics of the probabilities the model reports: calibrated by ``temperature`` when
    given (then ``ece_before``/``loss_before`` are those of the raw softmax)."""
    k = len(classes)
    probs = probabilities(logits, temperature)
    pred = probs.argmax(1)
    nll = _nll(probs, labels)
    confusion = np.zeros((k, k), dtype=np.int64)  # rows: true class, columns: predicted
    np.add.at(confusion, (labels, pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    precision = tp / np.maximum(confusion.sum(0), 1)
    recall = tp / np.maximum(confusion.sum(1), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None)[:top_pairs]
    pairs = [{"true": classes[i], "predicted": classes[j], "count": int(off[i, j])}
             for i, j in zip(*np.unravel_index(order, off.shape)) if off[i, j] > 0]
    out = {
        "n": int(len(labels)),
        "accuracy": float((pred == labels).mean()),
        "loss": float(nll),
        "ece": expected_calibration_error(probs, labels),
        "temperature": temperature,
        "per_class": [
            {"class": c, "precision": float(precision[i]), "recall": float(recall[i]),
             "f1": float(f1[i]), "support": int(confusion[i].sum())}
            for i, c in enumerate(classes)
        ],
        "macro_f1": float(f1.mean()),
        "confused_pairs": pairs,
        "confusion": confusion.tolist(),
    }
    if temperature:  # the same figures for the raw softmax
        raw = probabilities(logits)
        out["ece_before"] = expected_calibration_error(raw, labels)
        out["loss_before"] = _nll(raw, labels)
    return out


def dataset_for(ck: Checkpoint, split: str, data_dir: str | None = None) -> data_mod.Dataset:
    """The checkpoint's own dataset and split (same validation hold-out as in training),
    looked for where training found it unless ``data_dir`` says otherwise."""
    sp = ck.meta.get("split", {})
    if split != "test" and "seed" in sp and sp["seed"] is None:  # an ensemble's mixed split
        raise DataError(f"split: the members of {ck.path.parent.parent.name} held out different "
                        "validation images (each trained on digits another validates on), so "
                        "only the test split is fair to it; ensemble runs trained with one "
                        "--split-seed to evaluate it on validation")
    val_size = sp.get("val_size", -1)
    return data_mod.load(ck.meta["dataset"], split, data_dir=data_dir or sp.get("data_dir"),
                         val_size=None if val_size is None or val_size < 0 else val_size,
                         seed=sp.get("seed", 0))


def evaluate(path: str | Path | Checkpoint, split: str = "test", *, which: str = "best",
             data_dir: str | None = None, dataset: str | None = None, device: str = "cpu",
             threads: int = 0) -> Evaluation:
    """Metrics of a checkpoint on ``split`` of its own dataset (the same validation hold-out
    as in training), or of another ``dataset`` with the same classes."""
    if isinstance(path, Checkpoint):
        ck = path
    else:
        ck = load_checkpoint(path, which=which, device=device)
    get_engine(ck.engine).set_threads(threads)
    if dataset:
        ds = data_mod.load(dataset, split, data_dir=data_dir)
        if list(ds.classes) != ck.classes:
            raise DataError(f"dataset {dataset!r} has classes {list(ds.classes)}, but the "
                                     f"model predicts {ck.classes}")
    else:
        ds = dataset_for(ck, split, data_dir)
    x = ck.normalize(ds.images.astype(np.float32) / 255.0)
    logits = ck.logits(x)
    metrics = compute_metrics(logits, ds.labels, ds.classes, temperature=temperature_of(ck))
    return Evaluation(metrics, ck, ds, logits)


def format_metrics(m: dict[str, Any], title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"accuracy {100 * m['accuracy']:.2f}%  loss {m['loss']:.4f}  "
                 f"ECE {100 * m['ece']:.2f}%  macro-F1 {m['macro_f1']:.4f}  (n={m['n']:,})")
    if m.get("temperature"):
        lines.append(f"calibrated: temperature {m['temperature']:.3f}; before calibration "
                     f"loss {m['loss_before']:.4f}, ECE {100 * m['ece_before']:.2f}%")
    else:
        lines.append("not calibrated (raw softmax); `mnistlab calibrate RUN` fits a temperature")
    lines.append(f"{'class':>12} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
    for r in m["per_class"]:
        lines.append(f"{r['class'][:12]:>12} {r['precision']:9.4f} {r['recall']:7.4f} "
                     f"{r['f1']:7.4f} {r['support']:8d}")
    if m["confused_pairs"]:
        lines.append("most confused (true -> predicted: count): " + ", ".join(
            f"{p['true']}->{p['predicted']}: {p['count']}" for p in m["confused_pairs"][:5]))
    return "\n".join(lines)
