"""Convolutional models. Flattened sizes are computed from a dummy forward pass, never typed."""

from __future__ import annotations

import torch
from torch import nn

from . import register
from .base import Classifier


def _flat_dim(module: nn.Module) -> int:
    with torch.no_grad():
        return module(torch.zeros(1, 1, 28, 28)).flatten(1).shape[1]


@register("seed-cnn")
class SeedCNN(Classifier):
    """The classic two-convolution network of the TensorFlow MNIST tutorials, built correctly.

    conv 5x5x32 -> 2x2 max-pool -> conv 5x5x64 -> 2x2 max-pool -> dense 1024 -> dropout -> 10.

    Fixed against the usual tutorial code: (1) convolutions use 'SAME' padding (2 pixels
    for a 5x5 kernel), so the maps are 28x28 -> 14x14 -> 7x7; with 'VALID' padding they would
    be 24 -> 12 -> 8 -> 4, not 7x7. (2) The flatten size is 7*7*64 = 3136, because the
    second convolution has 64 filters; the tutorials' 7*7*32 does not match the tensor.
    Here the size is computed from the layers, so it cannot drift.
    """

    def __init__(self, *, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        self.config = dict(num_classes=num_classes, dropout=dropout)
        convs = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),  # 32x14x14
            nn.Sequential(nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),  # 64x7x7
        )
        flat = _flat_dim(convs)  # 3136 = 7*7*64
        self.backbone = nn.Sequential(
            *convs,
            nn.Sequential(nn.Flatten(), nn.Linear(flat, 1024), nn.ReLU(), nn.Dropout(dropout)),
        )
        self.feature_dim = 1024
        self._init_head(num_classes)


@register("lenet5")
class LeNet5(Classifier):
    """LeNet-5 (LeCun et al., 1998) on 28x28 inputs padded to 32x32, with ReLU and max-pool."""

    def __init__(self, *, num_classes: int = 10):
        super().__init__()
        self.config = dict(num_classes=num_classes)
        convs = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),  # 6x14x14
            nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)),  # 16x5x5
        )
        flat = _flat_dim(convs)
        self.backbone = nn.Sequential(
            *convs,
            nn.Sequential(nn.Flatten(), nn.Linear(flat, 120), nn.ReLU()),
            nn.Sequential(nn.Linear(120, 84), nn.ReLU()),
        )
        self.feature_dim = 84
        self._init_head(num_classes)


@register("pytorch-example")
class PyTorchExampleNet(Classifier):
    """The network of the official PyTorch MNIST example (the speed reference).

    conv 3x3x32 -> conv 3x3x64 -> 2x2 max-pool -> dropout 0.25 -> dense 128 -> dropout 0.5.
    """

    def __init__(self, *, num_classes: int = 10):
        super().__init__()
        self.config = dict(num_classes=num_classes)
        convs = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU()),  # 32x26x26
            nn.Sequential(nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25)),
        )
        flat = _flat_dim(convs)  # 9216 = 64*12*12
        self.backbone = nn.Sequential(
            *convs,
            nn.Sequential(nn.Flatten(), nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(0.5)),
        )
        self.feature_dim = 128
        self._init_head(num_classes)


def _conv_bn(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@register("fast-cnn")
class FastCNN(Classifier):
    """A small batch-normalized CNN designed for time-to-accuracy on a CPU.

    Few channels keep the FLOPs low; batch norm lets it train at a high learning rate in
    one short one-cycle schedule. Each block is conv 3x3 -> BN -> ReLU (-> 2x2 max-pool);
    the last block's map is global-max-pooled into the features.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        widths: tuple[int, ...] | list[int] = (16, 32, 64),
        dense: int = 0,  # optional hidden dense layer before the head (0: none)
    ):
        super().__init__()
        self.config = dict(num_classes=num_classes, widths=list(widths), dense=dense)
        blocks: list[nn.Module] = []
        cin = 1
        for w in widths:
            blocks.append(_conv_bn(cin, w, pool=True))
            cin = w
        blocks.append(nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten()))
        if dense:
            blocks.append(nn.Sequential(nn.Linear(cin, dense), nn.ReLU()))
        self.backbone = nn.Sequential(*blocks)
        self.feature_dim = dense or cin
        self._init_head(num_classes)
