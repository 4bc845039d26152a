"""Optimizer and learning-rate schedule factories.

The schedule is a plain function of the step, ``factor(step)``, that multiplies each
parameter group's base learning rate; the training loop sets the rate before every step.
That keeps every schedule visible in a few lines and makes resuming exact: the only state
is the step count (and, for reduce-on-plateau, its scale and counters).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from .config import TrainConfig


def param_groups(model: torch.nn.Module, lr_scales: dict[str, float] | None = None) -> list[dict]:
    """Trainable parameters, grouped by learning-rate scale (discriminative fine-tuning):
    ``lr_scales`` maps a parameter-name prefix to a multiplier (longest prefix wins)."""
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0
        if lr_scales:
            matches = [k for k in lr_scales if name.startswith(k)]
            if matches:
                scale = lr_scales[max(matches, key=len)]
        groups.setdefault(scale, []).append(p)
    return [{"params": ps, "lr_scale": s} for s, ps in sorted(groups.items())]


def build_optimizer(cfg: TrainConfig, groups: Iterable[dict]) -> torch.optim.Optimizer:
    groups = [dict(g, lr=cfg.lr * g.get("lr_scale", 1.0)) for g in groups]
    # Adam and AdamW as one fused kernel per step instead of a dozen foreach ops: the same
    # update, ~0.35 ms less per step of the quick recipe on 2 CPU cores (~5% of its time)
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, fused=fused or None)
    if cfg.optimizer == "adamw":
        # torch's AdamW applies its weight_decay decoupled, exactly as the loop does for the
        # other optimizers; the loop leaves AdamW's own decay to it (see decoupled_decay).
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                                 fused=fused or None)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adadelta":
        return torch.optim.Adadelta(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


@torch.no_grad()
def decoupled_decay(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> None:
    """w <- w - lr * wd * w for weight matrices, before the optimizer step.

    Unlike an L2 penalty, this shrinkage bypasses the gradient, so adaptive optimizers
    (Adam, RMSprop) do not rescale it per parameter (Loshchilov & Hutter, 2019).
    """
    if cfg.weight_decay == 0 or cfg.optimizer == "adamw":
        return
    for g in optimizer.param_groups:
        for p in g["params"]:
            if p.ndim > 1:
                p.mul_(1 - g["lr"] * cfg.weight_decay)


def penalty(cfg: TrainConfig, model: torch.nn.Module) -> torch.Tensor | float:
    """L1 and L2 penalties on weight matrices and kernels (biases and norm scales excluded)."""
    if cfg.l1 == 0 and cfg.l2 == 0:
        return 0.0
    total: torch.Tensor | float = 0.0
    for p in model.parameters():
        if p.requires_grad and p.ndim > 1:
            if cfg.l1:
                total = total + cfg.l1 * p.abs().sum()
            if cfg.l2:
                total = total + 0.5 * cfg.l2 * p.pow(2).sum()
    return total


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

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
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
