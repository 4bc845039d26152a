"""Learning-rate schedules, shared by both engines (no torch, no NumPy).

A schedule is a plain function of the step, ``factor(step)``, that multiplies each
parameter group's base learning rate; the training loop sets the rate before every step.
That keeps every schedule visible in a few lines and makes resuming exact: the only state
is the step count (and, for reduce-on-plateau, its scale and counters).
"""

from __future__ import annotations

import math
from typing import Any

from .config import TrainConfig


class LRSchedule:
    """``factor(step)`` in (0, 1] times the base rate; plus reduce-on-plateau per epoch."""

    def __init__(self, cfg: TrainConfig, steps_per_epoch: int, total_steps: int | None = None):
        self.cfg = cfg
        self.steps_per_epoch = steps_per_epoch
        self.total = total_steps or cfg.epochs * steps_per_epoch
        self.warmup = round(cfg.warmup_epochs * steps_per_epoch)
        # reduce-on-plateau state
        self.scale = 1.0
        self.best = -math.inf
        self.bad_epochs = 0

    def factor(self, step: int) -> float:
        c, t = self.cfg, step
        if c.schedule == "onecycle":
            # cosine rise from lr/25 over pct_start of the steps, then cosine fall to lr/1e4
            rise = max(1, round(c.pct_start * self.total))
            if t < rise:
                return _cos_interp(1 / 25, 1.0, t / rise)
            return _cos_interp(1.0, 1e-4, min(1.0, (t - rise) / max(1, self.total - rise)))
        if t < self.warmup:
            return (t + 1) / self.warmup
        epoch = t // self.steps_per_epoch
        if c.schedule == "constant":
            f = 1.0
        elif c.schedule == "step":
            f = c.gamma ** (epoch // c.step_epochs)
        elif c.schedule == "exponential":
            f = c.gamma ** (t / self.steps_per_epoch)  # smooth: gamma per epoch
        elif c.schedule == "cosine":
            progress = (t - self.warmup) / max(1, self.total - self.warmup)
            floor = c.min_lr / c.lr
            f = _cos_interp(1.0, floor, min(1.0, progress))
        else:  # plateau: constant until the validation metric stalls
            f = 1.0
        return f * self.scale

    def lr(self, step: int) -> float:
        """The base learning rate at ``step`` (a group's is this times its ``lr_scale``)."""
        return self.cfg.lr * self.factor(step)

    def apply(self, optimizer: Any, step: int) -> float:
        """Set every parameter group's rate for ``step`` (a torch optimizer); returns the
        base rate."""
        f = self.factor(step)
        for g in optimizer.param_groups:
            g["lr"] = self.cfg.lr * g.get("lr_scale", 1.0) * f
        return self.cfg.lr * f

    def end_epoch(self, val_metric: float) -> None:
        """Reduce-on-plateau: ``val_metric`` is higher-is-better (val accuracy or -loss)."""
        if self.cfg.schedule != "plateau":
            return
        if val_metric > self.best + 1e-6:
            self.best, self.bad_epochs = val_metric, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.cfg.plateau_patience:
                self.scale *= self.cfg.plateau_factor
                self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale, self.best, self.bad_epochs = state["scale"], state["best"], state["bad_epochs"]


def _cos_interp(start: float, end: float, frac: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * frac))
