"""Calibrated probabilities and a "not a digit" score, both fitted on the validation split.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): the
logits are divided by one scalar T > 0, chosen to minimize the negative log-likelihood of
the validation labels. Dividing every logit by the same positive number never changes which
class is largest, so accuracy is untouched; T > 1 softens over-confident probabilities, T < 1
sharpens under-confident ones (label smoothing makes a net under-confident: ``quick`` gets
T ~0.5). NLL is convex in 1/T, hence unimodal in log T, so a golden-section search over
log T in [log 0.05, log 20] finds the minimum; 40 steps shrink the bracket to ~1e-8.

"Not a digit": the energy score of Liu et al. 2020, ``E(x) = -T logsumexp(z / T)``, with the
calibrated T. It is low where the net has seen data like x (large logits) and high where it
has not. Chosen on validation digits against Fashion-MNIST *training* images (the test
images are kept for the benchmark), where it separated the two at least as well as the
maximum logit and clearly better than the maximum probability, which saturates near 1 for
many images of either kind (figures in docs/serving.md). It is reported as ``ood_score``,
the share of validation digits whose energy is lower (more digit-like): 0.5 is a typical
digit, 0.99 stranger than 99% of real digits; at or above ``OOD_THRESHOLD`` the input is
flagged ``not_digit``.

``calibrate_run(run)`` fits both on the run's validation split and stores them in the
checkpoint's metadata (``calibration``); every consumer (``evaluate``, ``Predictor``, the
server) reads them from there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import atomic_write_json, load_checkpoint, read_meta
from .evaluate import dataset_for, expected_calibration_error, softmax

OOD_THRESHOLD = 0.99  # ood_score at or above this flags "not a digit" (1% of real digits)
# levels of the stored quantiles of the validation energies: fine steps in the upper tail
_LEVELS = np.concatenate([np.linspace(0, 0.9, 91), np.linspace(0.9, 1, 101)[1:]])
T_RANGE = (0.05, 20.0)  # searched temperatures


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / T)."""
    lp = log_softmax(np.asarray(logits, np.float64) / temperature)
    return float(-lp[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, steps: int = 40) -> float:
    """The T in ``T_RANGE`` that minimizes ``nll(logits, labels, T)`` (golden section on log T)."""
    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on zero examples")
    z = np.asarray(logits, np.float64)
    f = lambda u: nll(z, labels, math.exp(u))  # noqa: E731
    a, b = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(steps):
        if fc < fd:  # the minimum lies in [a, d]
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:  # in [c, b]
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return math.exp((a + b) / 2)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N,) energy ``-T logsumexp(z / T)``: higher is less like the training data."""
    z = np.asarray(logits, np.float64) / temperature
    top = z.max(axis=1)
    return -temperature * (top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def ood_scores(logits: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
    """(N,) share of validation digits with a lower energy, 0..1, from a run's calibration."""
    ood = calibration["ood"]
    e = energy(logits, calibration["temperature"])
    return np.interp(e, ood["quantiles"], ood["levels"])


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """Area under the ROC curve of a score meant to be higher ``outside`` the training data:
    the probability that a random outside example scores above a random inside one (ties
    count half), from the rank-sum (Mann-Whitney) statistic."""
    s = np.concatenate([inside, outside]).astype(np.float64)
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # ranks of tied values: averaged
    ranks = (first + (counts + 1) / 2)[inverse]
    n, m = len(inside), len(outside)
    return float((ranks[n:].sum() - m * (m + 1) / 2) / (n * m))


def fit_calibration(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Temperature, ECE and NLL before/after, and the energy quantiles, from validation
    logits (N, C) and labels (N,)."""
    t = fit_temperature(logits, labels)
    e = energy(logits, t)
    return {
        "temperature": t,
        "ece_before": expected_calibration_error(softmax(logits), labels),
        "ece_after": expected_calibration_error(softmax(logits / t), labels),
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, t),
        "split": "val",
        "n": int(len(labels)),
        "ood": {"score": "energy", "threshold": OOD_THRESHOLD,
                "levels": [round(float(v), 4) for v in _LEVELS],
                "quantiles": [float(v) for v in np.quantile(e, _LEVELS)]},
    }


def calibrate_run(path: str | Path, *, which: str = "best", data_dir: str | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fit the calibration on the run's own validation split and write it into the
    checkpoint's metadata (``calibration``). Only the JSON is rewritten (atomically); the
    weights and their checksum are untouched. Returns the calibration."""
    ck = load_checkpoint(path, which=which)
    ds = dataset_for(ck, "val", data_dir)
    if len(ds) == 0:
        raise ValueError(f"{ck.path}: the run has no validation images to calibrate on")
    logits = ck.logits(ck.normalize(ds.images.astype(np.float32) / 255.0))
    cal = fit_calibration(logits, ds.labels)
    meta = read_meta(ck.path)
    meta["calibration"] = cal
    atomic_write_json(ck.path, meta)
    log(f"calibration: temperature {cal['temperature']:.3f}, validation ECE "
        f"{100 * cal['ece_before']:.2f}% -> {100 * cal['ece_after']:.2f}%, NLL "
        f"{cal['nll_before']:.4f} -> {cal['nll_after']:.4f} (n={cal['n']:,}); "
        f"written to {ck.path}")
    return cal
