"""Knowledge distillation (Hinton, Vinyals & Dean, 2015): a student learns from the softened
predictions of one or more trained teachers as well as from the labels.

    loss = alpha * T^2 * KL(p_teacher(T) || p_student(T)) + (1 - alpha) * CE(student, labels)

p(T) = softmax(logits / T). A temperature T > 1 exposes how the teachers rank the wrong
classes (a 7 that looks like a 1), which the labels do not say; T^2 keeps the soft term's
gradients on the scale of the hard one's as T changes. Each teacher's logits are first
divided by its calibration temperature (fitted on its validation split when it was trained,
see calibrate.py), so that a teacher trained with label smoothing (under-confident: its raw
logits are squeezed together) and one trained without speak on one scale; T then softens
calibrated probabilities. Several teachers are averaged in probability space (an
ensemble's prediction). Any registered torch model can be the
student; it trains in the one training loop, which calls ``DistillLoss`` in place of
cross-entropy (``Hooks(loss=...)``) on the same (augmented) batch the student sees.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import Checkpoint, load_checkpoint
from ..config import TrainConfig
from ..errors import ConfigError


class DistillError(ConfigError):
    """A distillation request that cannot be carried out."""


class Teacher:
    """A loaded checkpoint as a function of the student's normalized batch -> logits."""

    def __init__(self, ck: Checkpoint, student_norm: dict[str, float], device: torch.device):
        self.ck = ck
        self.calibration = ck.temperature  # 1.0 for a run that was never calibrated
        t = ck.meta["normalization"]
        # x_student * std_s + mean_s = pixels in 0..1; then the teacher's own normalization
        self.a = student_norm["std"] / t["std"]
        self.b = (student_norm["mean"] - t["mean"]) / t["std"]
        if ck.engine == "torch":
            ck.model.to(device).eval()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated logits: the model's, divided by its calibration temperature."""
        x = x * self.a + self.b
        if self.ck.engine == "torch":
            logits = self.ck.model(x).float()
        else:  # NumPy engine
            logits = torch.from_numpy(self.ck.logits(x.cpu().numpy().astype(np.float32)))
        return logits.to(x.device) / self.calibration


class DistillLoss:
    """``loss(logits, y, x)`` for the training loop's ``Hooks.loss``."""

    def __init__(self, teachers: list[Teacher], temperature: float, alpha: float,
                 label_smoothing: float = 0.0):
        self.teachers, self.t, self.alpha = teachers, temperature, alpha
        self.label_smoothing = label_smoothing

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = self.t
        with torch.no_grad():  # (B, K): the teachers' mean distribution at temperature T
            soft = torch.stack([F.softmax(teacher(x) / t, dim=1) for teacher in self.teachers])
            soft = soft.mean(0)
        kl = F.kl_div(F.log_softmax(logits / t, dim=1), soft, reduction="batchmean")
        hard = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return self.alpha * t * t * kl + (1 - self.alpha) * hard


def load_teachers(paths: list[str | Path]) -> list[Checkpoint]:
    if not paths:
        raise DistillError("teacher: give at least one --teacher RUN")
    teachers = []
    for p in paths:
        if not Path(p).exists():
            raise DistillError(f"teacher: {p} does not exist (expected a run directory or "
                               "checkpoint)")
        teachers.append(load_checkpoint(p))
    classes = teachers[0].classes
    for ck in teachers[1:]:
        if ck.classes != classes:
            raise DistillError(f"teacher: {ck.path} predicts classes {ck.classes}, but "
                               f"{teachers[0].path} predicts {classes}; teachers must agree")
    return teachers


def distill(teachers: list[str | Path], cfg: TrainConfig, *, temperature: float = 4.0,
            alpha: float = 0.9, log: Callable[[str], None] = print) -> Path:
    """Train ``cfg.model`` (the student) on ``cfg.dataset`` from the teachers' soft targets
    and the labels; returns the run directory. The teachers' classes must be the dataset's."""
    from .. import data as data_mod
    from ..engines.torch_engine import pick_device
    from ..training import Hooks, train

    if temperature <= 0:
        raise DistillError(f"temperature: must be > 0, got {temperature:g}")
    if not 0.0 <= alpha <= 1.0:
        raise DistillError(f"alpha: the soft-target weight must be in [0, 1], got {alpha:g}")
    if cfg.model == "numpy-mlp":
        raise DistillError("student: the NumPy engine (numpy-mlp) cannot be distilled into; "
                           "choose a torch model from `mnistlab models`")
    cks = load_teachers(teachers)
    val = data_mod.load(cfg.dataset, "val", data_dir=cfg.data_dir or None, seed=cfg.seed,
                        val_size=None if cfg.val_size < 0 else cfg.val_size)
    if list(val.classes) != cks[0].classes:
        raise DistillError(f"dataset: {cfg.dataset} has classes {list(val.classes)}, the "
                           f"teachers predict {cks[0].classes}")
    device = pick_device(cfg.device)
    norm = {"mean": val.mean, "std": val.std}
    loss = DistillLoss([Teacher(ck, norm, device) for ck in cks], temperature, alpha,
                       cfg.label_smoothing)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    cfg = cfg.replace(name=cfg.name or f"{cfg.model}-distilled-{cfg.dataset.replace(':', '_')}-"
                      f"{stamp}")
    meta: dict[str, Any] = {"distill": {
        "temperature": temperature, "alpha": alpha,
        "teachers": [{"path": str(ck.path.resolve()), "model": ck.meta["model"],
                      "calibration_temperature": ck.temperature,
                      "weights_sha256": ck.meta["weights"]["sha256"],
                      "metrics": ck.meta.get("metrics")} for ck in cks]}}
    log(f"distilling {len(cks)} teacher(s) ({', '.join(ck.meta['model'] for ck in cks)}) into "
        f"{cfg.model} on {cfg.dataset}: T={temperature:g}, soft weight {alpha:g}")
    return train(cfg, hooks=Hooks(loss=loss, meta=meta), log=log)

