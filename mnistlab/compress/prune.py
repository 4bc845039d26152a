"""Magnitude pruning: unstructured masks (global or per layer, one-shot or gradual) and
structured pruning that removes whole channels/neurons and rebuilds a narrower model.

Unstructured: the weights of every Conv2d and Linear layer (biases and norms are kept) are
ranked by |w|; the smallest ``round(sparsity * n)`` become zero, counted over all those
weights together (``global``: layers that matter less give up more) or in each layer
(``layer``). Ranking uses ``topk``, not a threshold, so the count is exact even with ties.
The zeros are kept through fine-tuning by writing them again after every optimizer step
(``apply_masks`` from the training loop's ``after_step`` hook); the model stays a plain
registry model, so its checkpoints load anywhere.

Gradual (Zhu & Gupta, 2017): sparsity rises as s_t = s_f (1 - (1 - t/n)^3) over the first
n fine-tuning steps, re-ranking the weights every few steps, so the network adapts while
weights leave; the last mask holds until the end.

Structured: each backbone Conv2d/Linear layer loses its output channels (neurons) of least
importance (L1 norm of the filter, Li et al. 2017; or |gamma| of the batch norm that follows,
Liu et al. 2017), together with the matching inputs of the next layer (including the
flatten between a convolution and a dense layer) and the batch-norm entries. The result is a
smaller model of the same registry name built from ``model.with_widths(...)``: its tensors
really shrink, so it is smaller and faster without any sparse kernel.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..models import create_model
from ..models.base import Classifier

SCOPES = ("global", "layer")


class PruneError(ConfigError):
    """A pruning request that cannot be carried out (bad amount, unsupported model)."""


def prunable(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{state-dict name: weight}`` of every Conv2d and Linear layer, in model order."""
    return {f"{name}.weight" if name else "weight": m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def check_amount(sparsity: float, what: str = "prune") -> None:
    if not 0.0 <= sparsity < 1.0:
        raise PruneError(f"{what}: the fraction to remove must be in [0, 1), got {sparsity:g}")


# ------------------------------------------------------------------------------ unstructured


@torch.no_grad()
def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "global"
                    ) -> dict[str, torch.Tensor]:
    """Boolean keep-masks (True = kept) removing exactly ``round(sparsity * n)`` weights of
    smallest magnitude, n counted over all prunable weights (global) or per layer."""
    check_amount(sparsity)
    if scope not in SCOPES:
        raise PruneError(f"scope: must be one of {', '.join(SCOPES)}, got {scope!r}")
    weights = prunable(model)
    if scope == "layer":
        return {name: _keep_largest(w.abs().flatten(), round(sparsity * w.numel())).view_as(w)
                for name, w in weights.items()}
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    keep = _keep_largest(flat, round(sparsity * flat.numel()))
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = keep[start : start + w.numel()].view_as(w)
        start += w.numel()
    return masks


def _keep_largest(scores: torch.Tensor, n_remove: int) -> torch.Tensor:
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_remove > 0:
        keep[torch.topk(scores, n_remove, largest=False, sorted=False).indices] = False
    return keep


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place (+0.0, not -0.0: the compact format stores bit
    patterns, and a -0.0 would count as a value)."""
    weights = prunable(model)
    for name, keep in masks.items():
        w = weights[name]
        w.masked_fill_(~keep.to(w.device), 0.0)


def zhu_gupta(step: int, ramp_steps: int, final: float, initial: float = 0.0) -> float:
    """Sparsity at ``step`` of the cubic schedule of Zhu & Gupta (2017), reaching ``final``
    at ``ramp_steps`` and staying there."""
    t = min(max(step, 0), ramp_steps) / max(ramp_steps, 1)
    return final + (initial - final) * (1.0 - t) ** 3


class GradualPruner:
    """An ``after_step(step, model)`` hook for the training loop: every ``every`` steps of the
    ramp, new masks at the scheduled sparsity; after every step, the current masks."""

    def __init__(self, model: nn.Module, final: float, *, scope: str, ramp_steps: int,
                 every: int):
        check_amount(final)
        self.model, self.final, self.scope = model, final, scope
        self.ramp_steps, self.every = max(1, ramp_steps), max(1, every)
        self.masks: dict[str, torch.Tensor] = {}
        self.sparsity = 0.0
        self.history: list[tuple[int, float]] = []  # (step, sparsity) at each mask update

    def __call__(self, step: int, _model: nn.Module) -> None:
        if step <= self.ramp_steps and (step % self.every == 0 or step == self.ramp_steps):
            self.sparsity = zhu_gupta(step, self.ramp_steps, self.final)
            self.masks = magnitude_masks(self.model, self.sparsity, self.scope)
            self.history.append((step, self.sparsity))
        if self.masks:
            apply_masks(self.model, self.masks)


def sparsity_table(model: nn.Module) -> list[dict]:
    """Per prunable layer: name, shape, weights, non-zero weights, sparsity (0..1)."""
    rows = []
    for name, w in prunable(model).items():
        nz = int(torch.count_nonzero(w))
        rows.append({"layer": name, "shape": list(w.shape), "weights": w.numel(),
                     "nonzero": nz, "sparsity": 1 - nz / max(w.numel(), 1)})
    return rows


def count_nonzero(model: nn.Module) -> tuple[int, int]:
    """(non-zero, total) over all parameters, biases and norms included."""
    nz = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return nz, sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------ structured


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv2d/Linear/BatchNorm2d layers and flattens, in forward order, checked to be a plain
    chain that structured pruning understands."""
    if type(model).with_widths is Classifier.with_widths:
        raise PruneError(f"structured pruning does not support {model.registry_name!r} (it "
                         "cannot be rebuilt narrower); use unstructured pruning")
    out: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.Flatten)) or hasattr(
                m, "flatten_order"):
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise PruneError(f"structured pruning: grouped convolution {name} is not supported")
            out.append((name, m))
        elif any(True for _ in m.parameters(recurse=False)):
            raise PruneError(f"structured pruning: layer {name} ({type(m).__name__}) of "
                             f"{model.registry_name!r} is not supported; use unstructured")
    return out


def _units(layers: list[tuple[str, nn.Module]]) -> list[int]:
    return [i for i, (_, m) in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear))]


def _channel_scores(layers: list[tuple[str, nn.Module]], units: list[int]) -> list[torch.Tensor]:
    """Importance of each output channel of every unit but the head."""
    scores = []
    for a, b in zip(units, units[1:]):
        bn = [m for _, m in layers[a + 1 : b] if isinstance(m, nn.BatchNorm2d)]
        if bn:  # with batch norm after it, a filter's own scale says nothing: use gamma
            scores.append(bn[0].weight.detach().abs())
        else:
            scores.append(layers[a][1].weight.detach().abs().flatten(1).sum(1))
    return scores


def _keep_channels(scores: list[torch.Tensor], amount: float, scope: str) -> list[torch.Tensor]:
    """Sorted indices of the channels each layer keeps (at least one per layer)."""
    if scope == "layer":
        return [torch.sort(torch.topk(s, max(1, len(s) - round(amount * len(s)))).indices).values
                for s in scores]
    # global: scores of different layers are made comparable by dividing by the layer's mean
    norm = [s / s.mean().clamp_min(1e-12) for s in scores]
    flat = torch.cat(norm)
    n_keep = max(len(norm), flat.numel() - round(amount * flat.numel()))
    cut = torch.topk(flat, n_keep).values.min()
    keep = [torch.nonzero(s >= cut).flatten() for s in norm]
    return [k if len(k) else torch.argmax(s).view(1) for k, s in zip(keep, norm)]


@torch.no_grad()
def structured_prune(model: Classifier, amount: float, scope: str = "layer") -> Classifier:
    """A narrower copy of ``model`` without the least important ``amount`` of the output
    channels (neurons) of its backbone Conv2d/Linear layers; the head keeps its classes."""
    check_amount(amount)
    if scope not in SCOPES:
        raise PruneError(f"scope: must be one of {', '.join(SCOPES)}, got {scope!r}")
    layers = _layers(model)
    units = _units(layers)
    if len(units) < 2 or layers[units[-1]][1] is not model.head:
        raise PruneError(f"structured pruning: {model.registry_name!r} is not a chain of layers "
                         "ending in its head")
    keep = _keep_channels(_channel_scores(layers, units), amount, scope)
    args = model.with_widths([len(k) for k in keep])
    new = create_model(model.registry_name, **args)
    new_layers = _layers(new)
    if [(n, type(m)) for n, m in new_layers] != [(n, type(m)) for n, m in layers]:
        raise PruneError(f"structured pruning: {model.registry_name!r} rebuilt with "
                         f"{args} has other layers")
    state = model.state_dict()
    out = {}
    prev_keep: torch.Tensor | None = None  # kept output channels of the previous unit
    flatten = None  # the flatten module seen since the previous unit
    for i, (name, m) in enumerate(layers):
        p = f"{name}." if name else ""
        if isinstance(m, nn.Flatten) or hasattr(m, "flatten_order"):
            flatten = m
            continue
        if isinstance(m, nn.BatchNorm2d):
            for k in ("weight", "bias", "running_mean", "running_var"):
                out[p + k] = state[p + k][prev_keep]
            out[p + "num_batches_tracked"] = state[p + "num_batches_tracked"]
            continue
        j = units.index(i)
        rows = keep[j] if j < len(keep) else torch.arange(m.weight.shape[0])
        w = state[p + "weight"][rows]
        if prev_keep is not None:
            cols = prev_keep
            if isinstance(m, nn.Linear) and isinstance(layers[units[j - 1]][1], nn.Conv2d):
                cols = _flat_columns(prev_keep, layers[units[j - 1]][1].out_channels,
                                     m.in_features, getattr(flatten, "flatten_order", "chw"))
            w = w[:, cols]
        out[p + "weight"] = w.clone()
        if m.bias is not None:
            out[p + "bias"] = state[p + "bias"][rows].clone()
        prev_keep, flatten = rows, None
    new.load_state_dict(out)  # strict: every tensor of the narrower model is accounted for
    return new.to(next(model.parameters()).device).train(model.training)


def _flat_columns(keep: torch.Tensor, channels: int, features: int, order: str) -> torch.Tensor:
    """Input columns of a dense layer fed by a flattened (C, H, W) map that keep channels
    ``keep``: c*S + p in (C, H, W) order, p*C + c in (H, W, C) order (S = H*W positions)."""
    s = features // channels
    pos = torch.arange(s)
    if order == "hwc":
        return (pos[:, None] * channels + keep[None, :]).flatten()
    return (keep[:, None] * s + pos[None, :]).flatten()
