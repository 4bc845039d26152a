"""Every registered model through one sweep, plus the summary table."""

from __future__ import annotations

import pytest
import torch

from mnistlab.models import count_parameters, create_model, list_models
from mnistlab.summary import summarize


@pytest.mark.parametrize("name", list_models())
def test_model_sweep(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    x = torch.randn(4, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (4, 7)
    assert torch.isfinite(logits).all()
    feats = model.features(x)
    assert feats.shape == (4, model.feature_dim)
    # every parameter receives a gradient
    model.train()
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, f"parameters without gradient: {missing}"
    # a new head for a new task keeps the backbone
    model.eval()  # no batch-norm statistics updates from here on
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head")}
    model.reset_head(3)
    assert model(x).shape == (4, 3) and model.config["num_classes"] == 3
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    # the config rebuilds the same architecture
    clone = create_model(name, **model.config)
    clone.load_state_dict(model.state_dict())
    clone.eval()
    assert torch.allclose(model(x), clone(x))


def test_unknown_model_and_bad_args() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        create_model("nope")
    with pytest.raises(ValueError, match="model 'mlp' takes no argument 'widths'; it takes"):
        create_model("mlp", widths=3)


def test_seed_cnn_shapes_are_the_corrected_ones() -> None:
    """SAME padding gives 7x7x64 = 3136 features into the 1024-unit layer."""
    model = create_model("seed-cnn")
    dense = model.backbone[2][1]
    assert dense.in_features == 7 * 7 * 64 and dense.out_features == 1024
    assert count_parameters(model) == 3_274_634


def test_summary_counts_flops_and_params() -> None:
    model = create_model("mlp", hidden=[100])
    s = summarize(model)
    assert s["params"] == 784 * 100 + 100 + 100 * 10 + 10
    # a linear layer's forward is 2 * in * out FLOPs per image
    assert s["flops"] == 2 * (784 * 100 + 100 * 10)
    linear_rows = [r for r in s["rows"] if r["type"] == "Linear"]
    assert [r["output"] for r in linear_rows] == [(1, 100), (1, 10)]


@pytest.mark.parametrize("fold,channels", [(2, 1), (4, 1), (2, 3), (7, 2)])
def test_fast_cnn_stem_is_pixel_unshuffle_in_channels_last(fold: int, channels: int) -> None:
    from mnistlab.models.cnn import _Stem

    x = torch.randn(5, channels, 28, 28)
    y = _Stem(fold)(x)
    assert torch.equal(y, torch.nn.functional.pixel_unshuffle(x, fold))
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_fast_cnn_flattens_in_hwc_order() -> None:
    from mnistlab.models.cnn import _FlattenNHWC

    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    flat = _FlattenNHWC()(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(flat, x.permute(0, 2, 3, 1).reshape(2, -1))
    assert torch.equal(_FlattenNHWC()(x), flat)  # the order does not depend on the layout


def test_fast_cnn_depth_adds_convolutions_per_block() -> None:
    one = create_model("fast-cnn", widths=[8, 16], depth=1)
    two = create_model("fast-cnn", widths=[8, 16], depth=2)
    convs = lambda m: sum(isinstance(x, torch.nn.Conv2d) for x in m.modules())  # noqa: E731
    assert (convs(one), convs(two)) == (2, 4)
    extra = (8 * 9 * 8 + 2 * 8) + (16 * 9 * 16 + 2 * 16)  # conv (no bias) + BN per block
    assert count_parameters(two) - count_parameters(one) == extra
    x = torch.randn(3, 1, 28, 28)
    assert two(x).shape == (3, 10)
    assert create_model("fast-cnn", **two.config).config == two.config  # rebuilt from a checkpoint
    with pytest.raises(ValueError, match="depth"):
        create_model("fast-cnn", depth=0)


def test_fast_cnn_crop_ignores_the_border_and_sees_the_rest() -> None:
    """crop=2: the net reads the central 24x24 only; every pixel inside it still counts."""
    torch.manual_seed(0)
    model = create_model("fast-cnn", widths=[8, 16], crop=2).eval()
    x = torch.randn(4, 1, 28, 28)
    border = x.clone()
    border[:, :, :2] = border[:, :, -2:] = border[:, :, :, :2] = border[:, :, :, -2:] = 9.0
    with torch.no_grad():
        assert torch.equal(model(border), model(x))
        for i, j in [(2, 2), (2, 25), (25, 2), (25, 25), (14, 14)]:  # the crop's corners
            poked = x.clone()
            poked[:, :, i, j] += 5.0
            assert not torch.allclose(model(poked), model(x)), (i, j)
    # 24x24 folded 2x2, two pools: 12 -> 6 -> 3, the same 3x3x16 features as without the crop
    assert model.backbone[-1][1].in_features == 3 * 3 * 16
    assert create_model("fast-cnn", **model.config).config == model.config
    assert "crop" not in create_model("fast-cnn").config  # configs of older checkpoints unchanged
    with pytest.raises(ValueError, match="fold must divide the 22-pixel input"):
        create_model("fast-cnn", crop=3, fold=4)
    with pytest.raises(ValueError, match="crop"):
        create_model("fast-cnn", crop=-1)


def test_resnet_small_stages_and_shortcuts() -> None:
    """Stride-2 stem, stages 14 -> 7 -> 4, and blocks that add their input back."""
    from torch import nn

    from mnistlab.models.resnet import ResidualBlock

    model = create_model("resnet-small").eval()
    h, maps = torch.randn(2, 1, 28, 28), []
    for block in model.backbone:
        h = block(h)
        maps.append(tuple(h.shape[1:]))
    assert maps == [(16, 14, 14), (16, 14, 14), (32, 7, 7), (64, 4, 4), (64,)]
    stage1, stage2 = model.backbone[1][0], model.backbone[2][0]
    assert isinstance(stage1.shortcut, nn.Identity)  # same width and size: the input itself
    assert isinstance(stage2.shortcut[0], nn.Conv2d)  # projection where the shape changes
    # with the residual branch silenced (its last batch norm scaled to 0), a block is
    # relu(x): the shortcut carries the input through
    block = ResidualBlock(8, 8).eval()
    nn.init.zeros_(block.body[-1].weight)
    nn.init.zeros_(block.body[-1].bias)
    x = torch.randn(3, 8, 5, 5)
    assert torch.equal(block(x), torch.relu(x))
