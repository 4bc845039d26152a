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

    def __init__(self, *, num_classes: int = 10, dropout: float = 0.5,
                 channels: tuple[int, int] | list[int] = (32, 64), dense: int = 1024):
        # channels/dense: the tutorial's widths; smaller ones come from structured pruning
        super().__init__()
        c1, c2 = channels
        self.config = dict(num_classes=num_classes, dropout=dropout, channels=[c1, c2],
                           dense=dense)
        convs = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),  # 32x14x14
            nn.Sequential(nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),  # 64x7x7
        )
        flat = _flat_dim(convs)  # 3136 = 7*7*64
        self.backbone = nn.Sequential(
            *convs,
            nn.Sequential(nn.Flatten(), nn.Linear(flat, dense), nn.ReLU(), nn.Dropout(dropout)),
        )
        self.feature_dim = dense
        self._init_head(num_classes)

    def with_widths(self, widths: list[int]) -> dict:
        return {**self.config, "channels": widths[:2], "dense": widths[2]}


@register("lenet5")
class LeNet5(Classifier):
    """LeNet-5 (LeCun et al., 1998) on 28x28 inputs padded to 32x32, with ReLU and max-pool."""

    def __init__(self, *, num_classes: int = 10, channels: tuple[int, int] | list[int] = (6, 16),
                 dense: tuple[int, int] | list[int] = (120, 84)):
        super().__init__()
        (c1, c2), (d1, d2) = channels, dense
        self.config = dict(num_classes=num_classes, channels=[c1, c2], dense=[d1, d2])
        convs = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),  # 6x14x14
            nn.Sequential(nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2)),  # 16x5x5
        )
        flat = _flat_dim(convs)
        self.backbone = nn.Sequential(
            *convs,
            nn.Sequential(nn.Flatten(), nn.Linear(flat, d1), nn.ReLU()),
            nn.Sequential(nn.Linear(d1, d2), nn.ReLU()),
        )
        self.feature_dim = d2
        self._init_head(num_classes)

    def with_widths(self, widths: list[int]) -> dict:
        return {**self.config, "channels": widths[:2], "dense": widths[2:]}


@register("pytorch-example")
class PyTorchExampleNet(Classifier):
    """The network of the official PyTorch MNIST example (the speed reference).

    conv 3x3x32 -> conv 3x3x64 -> 2x2 max-pool -> dropout 0.25 -> dense 128 -> dropout 0.5.
    """

    def __init__(self, *, num_classes: int = 10, channels: tuple[int, int] | list[int] = (32, 64),
                 dense: int = 128):
        super().__init__()
        c1, c2 = channels
        self.config = dict(num_classes=num_classes, channels=[c1, c2], dense=dense)
        convs = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, c1, 3), nn.ReLU()),  # 32x26x26
            nn.Sequential(nn.Conv2d(c1, c2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25)),
        )
        flat = _flat_dim(convs)  # 9216 = 64*12*12
        self.backbone = nn.Sequential(
            *convs,
            nn.Sequential(nn.Flatten(), nn.Linear(flat, dense), nn.ReLU(), nn.Dropout(0.5)),
        )
        self.feature_dim = dense
        self._init_head(num_classes)

    def with_widths(self, widths: list[int]) -> dict:
        return {**self.config, "channels": widths[:2], "dense": widths[2]}


class _Stem(nn.Module):
    """Folds each r x r patch of the image into r*r channels (``pixel_unshuffle``: lossless,
    (B, 1, 28, 28) -> (B, r*r, 28/r, 28/r)) and hands the map on in channels-last layout.

    Channels-last is a memory layout, not a change of values: oneDNN's CPU convolutions run
    these narrow layers about 2x faster in it than in NCHW (measured on 2 cores), and the layers
    after a channels-last input keep it. Only the input is converted; weights stay as they are.

    The fold is written as one ``stack`` of the r*r strided sub-images into the last (channel)
    dimension, which yields the channels-last map directly: the same values as
    ``pixel_unshuffle`` followed by a layout conversion, in one copy instead of two (~0.1 ms
    instead of ~0.3 ms for a batch of 256 on 2 cores).

    ``crop`` pixels are first dropped from each side (a free view): the border of an MNIST
    digit is nearly always paper, and the layers after it run on fewer pixels.
    """

    def __init__(self, fold: int, crop: int = 0):
        super().__init__()
        self.fold, self.crop = fold, crop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, c = self.fold, self.crop
        if c:
            x = x[:, :, c:-c, c:-c]
        if r == 1:
            return x.contiguous(memory_format=torch.channels_last)
        # (B, C, H/r, W/r, r*r): sub-image (i, j) holds x[..., i::r, j::r]
        y = torch.stack([x[:, :, i::r, j::r] for i in range(r) for j in range(r)], dim=-1)
        # channel c*r*r + i*r + j, as pixel_unshuffle numbers them; NHWC memory, NCHW shape.
        # No size is read off x: a traced or exported graph keeps a dynamic batch size.
        y = y.permute(0, 2, 3, 1, 4).flatten(3)  # (B, H/r, W/r, C*r*r)
        return y.permute(0, 3, 1, 2)


class _FlattenNHWC(nn.Module):
    """Flattens (B, C, H, W) in (H, W, C) order. On a channels-last map that order is the
    memory order, so this is a free view, and the gradient coming back has the same layout as
    the activations before it (flattening in NCHW order instead costs a copy each way, and
    the mismatched layouts made the ReLU's backward ~4x slower). ``flatten(1)``, not
    ``reshape(len(x), -1)``: ``len`` would bake the batch size into a traced graph."""

    flatten_order = "hwc"  # how channel c of the input maps to features (structured pruning)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


def _conv_pool_bn(cin: int, cout: int) -> list[nn.Module]:
    # max-pool before BN and ReLU: their memory-bound work runs on a quarter of the pixels
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
            nn.BatchNorm2d(cout), nn.ReLU()]


@register("fast-cnn")
class FastCNN(Classifier):
    """A small batch-normalized CNN designed for time-to-accuracy on a CPU.

    With widths (16, 32) and crop 2 the `quick` recipe (2 epochs, batch 256, Adam one-cycle,
    label smoothing 0.1) reaches 99.14% mean MNIST test accuracy (5 seeds, lowest 99.04%) in
    5.2 s of training on 2 CPU cores of a slow host (0.17 TFLOP at ~27% of its float32 matmul
    peak; without the crop 2.5 s on a faster host). See recipes/quick.toml (what was tried,
    on validation) and benchmarks/time_to_accuracy.py.

    crop: pixels dropped from each side of the 28x28 input first (2: the net sees 24x24 and
    its layers do 0.73x the work; MNIST's border is nearly always paper).

    stem: 28x28x1 -> 14x14x4 (pixel_unshuffle 2, lossless), so the first convolution runs
    at 14x14 instead of 28x28: a 3x3 convolution there sees a 6x6 patch of the image. Then,
    per width, conv 3x3 -> 2x2 max-pool -> BN -> ReLU (14 -> 7 -> 3 with two widths), a
    flatten in (H, W, C) order (free on the channels-last maps), a dense layer and the head.
    A second epoch helped more than any width or depth, so the network is kept cheap; the
    first block (14x14 maps) costs about half of each step, so it is the narrow one. The
    default widths (32, 32) take ~1 s longer (3.4-3.6 s) for the same validation accuracy
    within the seed noise.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        widths: tuple[int, ...] | list[int] = (32, 32),
        dense: int = 128,  # hidden dense layer before the head (0: none)
        fold: int = 2,  # stem: fold r x r patches into channels (1: none)
        depth: int = 1,  # convolutions per block; the extra ones are conv 3x3 -> BN -> ReLU
        crop: int = 0,  # pixels dropped from each side of the 28x28 input before the stem
    ):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if not 0 <= crop <= 10:
            raise ValueError(f"crop must be 0..10 pixels per side, got {crop}")
        self.config = dict(num_classes=num_classes, widths=list(widths), dense=dense, fold=fold,
                           depth=depth, **({"crop": crop} if crop else {}))
        blocks: list[nn.Module] = []
        cin = fold * fold
        for i, w in enumerate(widths):
            stem = [_Stem(fold, crop)] if i == 0 else []
            extra: list[nn.Module] = []
            for _ in range(depth - 1):  # at the block's input resolution, before its pool
                extra += [nn.Conv2d(cin, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
                cin = w
            blocks.append(nn.Sequential(*stem, *extra, *_conv_pool_bn(cin, w)))
            cin = w
        size = 28 - 2 * crop
        side = size // fold // 2 ** len(widths)  # each block halves the map (floor): 14 -> 7 -> 3
        if size % fold or side < 1:
            raise ValueError(f"fold must divide the {size}-pixel input and leave >= 1 pixel "
                             f"after {len(widths)} 2x2 pools; got fold={fold}")
        flat = cin * side * side  # 288 = 32*3*3 with the defaults
        if dense:
            blocks.append(nn.Sequential(_FlattenNHWC(), nn.Linear(flat, dense), nn.ReLU()))
        else:
            blocks[-1].append(_FlattenNHWC())
        self.backbone = nn.Sequential(*blocks)
        self.feature_dim = dense or flat
        self._init_head(num_classes)

    def with_widths(self, widths: list[int]) -> dict:
        n = len(self.config["widths"])
        dense = {"dense": widths[n]} if self.config["dense"] else {}
        return {**self.config, "widths": widths[:n], **dense}


def _conv_bn(cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0
             ) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU()]


@register("bn-cnn")
class BnCNN(Classifier):
    """A batch-normalized CNN for accuracy: stages of 3x3 convolutions, each ending in a
    learned 5x5 stride-2 downsampling, then one convolution over what is left.

    After the design of Deotte's Kaggle MNIST networks (single models ~99.6-99.7%, an
    ensemble of 15 at 99.76%): with the defaults, 28x28 -> 3x3 convs (no padding) 26 -> 24
    -> 5x5/2 12 -> 10 -> 8 -> 5x5/2 4 -> a 4x4 conv to 128 features -> dropout -> head.
    Every map size is computed from the layers; ``depth`` 3x3 convolutions per stage,
    ``dropout`` after each stage and before the head. The input is made channels-last,
    which oneDNN's CPU convolutions run faster (see fast-cnn). The search for the `best`
    recipe varies widths, depth, features and dropout (studies/best/).
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        widths: tuple[int, ...] | list[int] = (32, 64),
        depth: int = 2,  # 3x3 convolutions per stage, before its strided one
        features: int = 128,  # channels of the last convolution: the feature size
        dropout: float = 0.4,
    ):
        super().__init__()
        self.config = dict(num_classes=num_classes, widths=list(widths), depth=depth,
                           features=features, dropout=dropout)
        if not widths or depth < 1 or features < 1 or not 0 <= dropout < 1:
            raise ValueError(f"need widths, depth >= 1, features >= 1 and dropout in [0, 1); "
                             f"got {self.config}")
        stages: list[nn.Module] = []
        cin = 1
        for i, w in enumerate(widths):
            layers = [_Stem(1)] if i == 0 else []
            for _ in range(depth):
                layers += _conv_bn(cin, w, 3)
                cin = w
            layers += [*_conv_bn(w, w, 5, stride=2, padding=2), nn.Dropout(dropout)]
            stages.append(nn.Sequential(*layers))
        probe = nn.Sequential(*stages).eval()  # eval: the probe leaves BN statistics alone
        with torch.no_grad():
            side = probe(torch.zeros(1, 1, 28, 28)).shape[-1]  # 4 with the defaults
        probe.train()
        if side < 1:
            raise ValueError(f"{len(widths)} stages of depth {depth} leave no pixels of 28x28")
        stages.append(nn.Sequential(*_conv_bn(cin, features, side), nn.Flatten(),
                                    nn.Dropout(dropout)))
        self.backbone = nn.Sequential(*stages)
        self.feature_dim = features
        self._init_head(num_classes)
