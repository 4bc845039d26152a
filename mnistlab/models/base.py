from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Classifier(nn.Module):
    """Backbone (``features``) + linear ``head``; subclasses set ``self.backbone``,
    ``self.feature_dim`` and call ``_init_head``."""

    registry_name: str = "?"
    config: dict[str, Any]
    backbone: nn.Module
    head: nn.Linear
    feature_dim: int

    def _init_head(self, num_classes: int) -> None:
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes)

    def reset_head(self, num_classes: int) -> None:
        """A fresh head for a new task (fine-tuning); the backbone is kept."""
        device = self.head.weight.device
        self._init_head(num_classes)
        self.head.to(device)
        self.config = {**self.config, "num_classes": num_classes}

    def with_widths(self, widths: list[int]) -> dict[str, Any]:
        """Constructor arguments for the same network whose backbone Conv2d/Linear layers have
        these output widths (in forward order): how a structurally pruned model is rebuilt
        from its checkpoint. Models that cannot be narrowed this way do not override it."""
        raise NotImplementedError(f"{self.registry_name} cannot be rebuilt with other widths")

    def blocks(self) -> list[nn.Module]:
        """The backbone's blocks in order, for partial fine-tuning (``partial:K``)."""
        return list(self.backbone.children())
