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
