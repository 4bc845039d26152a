"""A small residual CNN (He et al., 2016, "Deep Residual Learning"), sized for 28x28 digits.

    stem  conv 3x3 stride 2, 1 -> w0, BN, ReLU                 (B, w0, 14, 14)
    stage s = 0..S-1: `depth` residual blocks of width w_s; the first block of every stage
          after the first halves the map with stride 2         14 -> 7 -> 4
    global average pool -> (B, w_last) features -> linear head

The stem halves the image at once (as ResNet's stride-2 stem does): at 28x28, the first
stage alone cost 4x the FLOPs of the whole network here, for maps of thin strokes that a
3x3 kernel at stride 2 still covers completely.

A residual block computes ``relu(x' + F(x))`` with ``F = conv-BN-ReLU-conv-BN`` (two 3x3
convolutions) and ``x'`` the input itself, or a 1x1 stride-2 convolution + BN where the
width or the map size changes (a projection shortcut). The identity path lets the
gradient reach early layers undiminished, which is what makes deep stacks trainable; this
is the "layer connection" change to the architecture that the guide's question 5 means.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register
from .base import Classifier


def _conv_bn(cin: int, cout: int, *, stride: int = 1) -> list[nn.Module]:
    # no conv bias: the batch norm after it has its own shift
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout)]


class ResidualBlock(nn.Module):
    """relu(shortcut(x) + F(x)); (B, cin, H, W) -> (B, cout, H/stride, W/stride)."""

    def __init__(self, cin: int, cout: int, *, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, stride=stride), nn.ReLU(),
                                  *_conv_bn(cout, cout))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:  # projection: match the width and the map size
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.shortcut(x) + self.body(x))


@register("resnet-small")
class ResNetSmall(Classifier):
    """A small residual CNN: stride-2 stem, residual stages 14 -> 7 -> 4, global average pool.

    Defaults (widths 16-32-64, one block per stage): 78k parameters, 5.1 MFLOPs per image.
    ``blocks()`` is [stem, stage 1, ..., stage S, pool], so ``partial:K`` fine-tuning counts
    stages from the top.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        widths: tuple[int, ...] | list[int] = (16, 32, 64),  # channels per stage
        depth: int = 1,  # residual blocks per stage
    ):
        super().__init__()
        if not widths or depth < 1:
            raise ValueError(f"need at least one stage and depth >= 1, got {widths}, {depth}")
        if len(widths) > 3:
            raise ValueError(f"at most 3 stages on 28x28 inputs (14 -> 7 -> 4), got {widths}")
        self.config = dict(num_classes=num_classes, widths=list(widths), depth=depth)
        stages: list[nn.Module] = [nn.Sequential(*_conv_bn(1, widths[0], stride=2), nn.ReLU())]
        cin = widths[0]
        for s, w in enumerate(widths):
            stride = 1 if s == 0 else 2  # halve the map at the start of every later stage
            blocks = [ResidualBlock(cin, w, stride=stride)]
            blocks += [ResidualBlock(w, w) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = w
        stages.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))  # (B, w_last)
        self.backbone = nn.Sequential(*stages)
        self.feature_dim = cin
        self._init_head(num_classes)
