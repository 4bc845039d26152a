"""Integer weights for storage, and quantization-aware training (QAT).

``quantize_weights`` rounds every Conv2d/Linear weight to symmetric per-output-channel
integers (``compact.quantize_per_channel``: the scheme ONNX Runtime uses for int8 weights)
and writes the dequantized values back into the model, so the float model that evaluates,
fine-tunes and exports is exactly the one the compact file stores. Activations stay float in
PyTorch; int8 inference with quantized activations is ONNX Runtime's job (export.py:
``--int8 static`` calibrates them on training images, ``--int8 dynamic`` quantizes them on
the fly for the dense layers).

QAT: ``FakeQuantModel`` wraps a model for fine-tuning so that its forward pass sees weights
rounded like ``quantize_weights`` rounds them and layer inputs rounded to uint8 as ONNX
Runtime's static quantization will (running min/max), with straight-through gradients
(``torch.fake_quantize_per_*_affine``). Its ``state_dict`` is the inner model's, so the
training loop's checkpoints stay plain registry checkpoints.

Why not ``torch.ao.quantization``: in torch 2.13 it warns that it is deprecated and will
be removed (as do quantized tensors), and its eager mode needs QuantStub/fusion surgery on
every model. The two core fake-quantize ops used here are not deprecated.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..compact import QTensor, quantize_per_channel
from .prune import prunable


@torch.no_grad()
def quantize_weights(model: nn.Module, bits: int = 8) -> dict[str, QTensor]:
    """Round every Conv2d/Linear weight in place; returns the integer tensors by name."""
    out = {}
    for name, w in prunable(model).items():
        q = quantize_per_channel(w.detach().cpu().numpy(), bits)
        w.copy_(torch.from_numpy(q.dequantize()))
        out[name] = q
    return out


def _weight_scale(w: torch.Tensor, qmax: int) -> torch.Tensor:
    peak = w.detach().abs().flatten(1).amax(1)
    return torch.where(peak > 0, peak / qmax, torch.ones_like(peak)).float()


class FakeQuantModel(nn.Module):
    """QAT wrapper: the inner model's forward with fake-quantized weights and layer inputs."""

    def __init__(self, model: nn.Module, bits: int = 8, momentum: float = 0.01):
        super().__init__()
        self.inner = model
        self.config = getattr(model, "config", {})
        self.qmax = 2 ** (bits - 1) - 1
        self.momentum = momentum  # running min/max of activations, as an observer keeps them
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        self.ranges: dict[str, torch.Tensor] = {}  # layer -> (min, max) of its input
        for name, m in self.layers.items():
            m.register_forward_pre_hook(self._input_hook(name))

    def _input_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            if not getattr(self, "_active", False):
                return None
            x = args[0]
            with torch.no_grad():
                lo_hi = torch.stack([x.min().clamp(max=0), x.max().clamp(min=0)]).float()
                if name not in self.ranges:
                    self.ranges[name] = lo_hi
                elif module.training:
                    self.ranges[name] += self.momentum * (lo_hi - self.ranges[name])
                lo, hi = self.ranges[name].tolist()
            scale = max((hi - lo) / 255.0, 1e-8)
            zero = int(min(255, max(0, round(-lo / scale))))
            return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255), *args[1:])

        return hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = {}
        for name, m in self.layers.items():
            scale = _weight_scale(m.weight, self.qmax)
            zero = torch.zeros(len(scale), dtype=torch.int32, device=scale.device)
            weights[f"{name}.weight"] = torch.fake_quantize_per_channel_affine(
                m.weight, scale, zero, 0, -self.qmax, self.qmax)
        self._active = True
        try:
            return torch.func.functional_call(self.inner, weights, (x,), strict=False)
        finally:
            self._active = False

    # the checkpoints the training loop writes are the inner model's, loadable anywhere
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.inner.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.inner.load_state_dict(state_dict, strict=strict, assign=assign)


def quantization_error(model: nn.Module, qtensors: dict[str, QTensor]) -> float:
    """Largest |dequantized - model weight| (0 when the model holds the quantized weights)."""
    weights = prunable(model)
    return max((float(np.abs(q.dequantize() - weights[n].detach().cpu().numpy()).max())
                for n, q in qtensors.items()), default=0.0)
