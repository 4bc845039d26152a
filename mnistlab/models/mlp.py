from __future__ import annotations

from torch import nn

from . import register
from .base import Classifier

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


@register("mlp")
class MLP(Classifier):
    """Fully connected network: 784 -> hidden... -> num_classes."""

    def __init__(
        self,
        *,
        num_classes: int = 10,
        hidden: tuple[int, ...] | list[int] = (512, 256),
        activation: str = "relu",
        dropout: float = 0.0,  # after every hidden activation
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.config = dict(num_classes=num_classes, hidden=list(hidden), activation=activation,
                           dropout=dropout)
        layers: list[nn.Module] = [nn.Flatten()]
        width = 28 * 28
        for h in hidden:
            block = [nn.Linear(width, h), ACTIVATIONS[activation]()]
            if dropout:
                block.append(nn.Dropout(dropout))
            layers.append(nn.Sequential(*block))
            width = h
        self.backbone = nn.Sequential(*layers)
        self.feature_dim = width
        self._init_head(num_classes)

    def with_widths(self, widths: list[int]) -> dict:
        return {**self.config, "hidden": list(widths)}
