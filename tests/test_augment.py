"""Augment: reproducible, per-sample, and each transform moves pixels the way it says."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from mnistlab.augment import (
    PRESETS,
    Augment,
    AugmentConfig,
    AugmentParams,
    augment_preset,
    sampling_grid,
)

NO_AFFINE = PRESETS["none"]


def blob(sx: float = 3.0, sy: float = 1.2, cx: float = 13.5, cy: float = 13.5) -> torch.Tensor:
    """(1, 1, 28, 28) Gaussian blob elongated along x (std sx, sy pixels) centred at (cx, cy)."""
    y, x = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    return torch.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2) / 2)[None, None]


def moments(img: torch.Tensor) -> tuple[float, float, float, float, float]:
    """Centre of mass (x, y), orientation (degrees, anticlockwise on screen), major/minor std."""
    w = img[0, 0].double()
    y, x = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    m = w.sum()
    mx, my = (w * x).sum() / m, (w * y).sum() / m
    cxx = (w * (x - mx) ** 2).sum() / m
    cyy = (w * (y - my) ** 2).sum() / m
    cxy = (w * (x - mx) * (y - my)).sum() / m
    angle = -0.5 * math.degrees(math.atan2(2 * cxy, cxx - cyy))  # minus: y points down
    ev = torch.linalg.eigvalsh(torch.tensor([[cxx, cxy], [cxy, cyy]]))
    return mx.item(), my.item(), angle, ev[1].sqrt().item(), ev[0].sqrt().item()


def affine(n: int = 1, angle=0.0, scale=1.0, dx=0.0, dy=0.0, shear=0.0) -> AugmentParams:
    full = lambda v: torch.full((n,), float(v))
    return AugmentParams(
        angle=full(angle),
        scale=full(scale),
        translate=torch.tensor([[dx, dy]]).float().expand(n, 2),
        shear=full(shear),
    )


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """64 real digits if mnist-5k is available, else blobs; (64, 1, 28, 28) float in 0..1."""
    from mnistlab import data

    try:
        ds = data.load("mnist-5k", "train")
        return torch.from_numpy(ds.images[:64]).float()[:, None] / 255
    except data.DataError:
        return torch.cat([blob(1 + i % 4, 1 + i % 3) for i in range(64)])


# ---- randomness, state, shapes ------------------------------------------------------------


def test_reproducible_under_seed_and_per_sample(digits):
    cfg = augment_preset("full")
    a, b = Augment(cfg, seed=7)(digits), Augment(cfg, seed=7)(digits)
    assert torch.equal(a, b)
    assert not torch.equal(a, Augment(cfg, seed=8)(digits))
    same = Augment(AugmentConfig(), seed=0)(digits[:1].expand(8, -1, -1, -1))
    assert all(not torch.equal(same[0], same[i]) for i in range(1, 8))  # per-sample params


def test_state_dict_resumes_the_stream(digits):
    aug = Augment(augment_preset("full"), seed=1)
    aug(digits)
    state = aug.state_dict()
    first = aug(digits)
    aug(digits)
    aug.load_state_dict(state)
    assert torch.equal(aug(digits), first)
    other = Augment(augment_preset("full"), seed=99)
    other.load_state_dict(state)
    assert torch.equal(other(digits), first)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_keep_shape_dtype_and_range(digits, name):
    out = Augment(augment_preset(name), seed=0)(digits)
    assert out.shape == digits.shape and out.dtype == digits.dtype
    # bilinear resampling is a convex combination of pixels and the 0 fill
    assert out.min() >= -1e-6 and out.max() <= digits.max() + 1e-6
    if name == "none":
        assert torch.equal(out, digits)
    else:
        assert not torch.equal(out, digits)


def test_dtypes_and_channels(digits):
    aug = Augment(AugmentConfig(), seed=0)
    assert aug(digits.double()).dtype == torch.float64
    u8 = (digits * 255).round().to(torch.uint8)
    out = Augment(AugmentConfig(), seed=0)(u8)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out / 255, aug.__class__(AugmentConfig(), seed=0)(u8.float() / 255))
    three = Augment(AugmentConfig(), seed=0)(digits.expand(-1, 3, -1, -1))
    assert torch.equal(three[:, 0], three[:, 2])  # channels share the sample's parameters


def test_sampled_parameters_cover_the_configured_ranges():
    p = Augment(AugmentConfig(shear=5.0), seed=0).sample(20_000)
    for v, lo, hi in [
        (p.angle, -10, 10),
        (p.scale, 0.9, 1.1),
        (p.translate, -2, 2),
        (p.shear, -5, 5),
    ]:
        assert v.min() >= lo and v.max() <= hi
        assert v.min() < lo + 0.01 * (hi - lo) and v.max() > hi - 0.01 * (hi - lo)
    assert Augment(NO_AFFINE).sample(4).angle is None


def test_presets_and_config_validation():
    assert augment_preset("affine") == AugmentConfig()
    assert augment_preset("none").is_identity
    full = augment_preset("full")
    assert full.has_affine and full.has_elastic and full.has_erase
    with pytest.raises(ValueError, match="choose from"):
        augment_preset("heavy")
    for bad in [dict(scale=(1.1, 0.9)), dict(rotate=-1), dict(erase_p=2.0), dict(shear=90)]:
        with pytest.raises(ValueError):
            AugmentConfig(**bad)


# ---- geometry ---------------------------------------------------------------------------------


def test_identity_parameters_return_the_input(digits):
    out = Augment(NO_AFFINE).apply(digits, affine(len(digits)))
    torch.testing.assert_close(out, digits, rtol=0, atol=1e-5)


def test_matches_affine_grid_reference(digits):
    """Against F.affine_grid built from an independent forward matrix and its inverse."""
    n = len(digits)
    p = Augment(AugmentConfig(rotate=30, scale=(0.7, 1.3), translate=4, shear=15)).sample(n)
    th, sh = torch.deg2rad(p.angle), torch.deg2rad(p.shear)
    rot = torch.stack([th.cos(), th.sin(), -th.sin(), th.cos()], 1).view(n, 2, 2)  # y down
    shear = torch.eye(2).repeat(n, 1, 1)
    shear[:, 0, 1] = sh.tan()
    inv = torch.linalg.inv(p.scale[:, None, None] * rot @ shear)
    theta = torch.cat([inv, -inv @ p.translate[:, :, None] / 14], 2)  # 14 px = 1 normalized
    ref_grid = F.affine_grid(theta, [n, 1, 28, 28], align_corners=False)
    torch.testing.assert_close(sampling_grid(p, n, 28, 28), ref_grid, rtol=0, atol=1e-5)
    want = F.grid_sample(digits, ref_grid, align_corners=False)
    torch.testing.assert_close(Augment(NO_AFFINE).apply(digits, p), want, rtol=0, atol=1e-4)


def test_translation_moves_the_centre_of_mass():
    x = blob()
    out = Augment(NO_AFFINE).apply(x, affine(dx=3.0, dy=-2.5))
    (x0, y0, *_), (x1, y1, *_) = moments(x), moments(out)
    assert x1 - x0 == pytest.approx(3.0, abs=0.02)
    assert y1 - y0 == pytest.approx(-2.5, abs=0.02)


@pytest.mark.parametrize("angle", [-10.0, 7.0, 25.0])
def test_rotation_turns_an_elongated_blob_by_the_angle(angle):
    x = blob()
    _, _, a0, major0, minor0 = moments(x)
    assert a0 == pytest.approx(0.0, abs=1e-6)
    cx, cy, a1, major1, minor1 = moments(Augment(NO_AFFINE).apply(x, affine(angle=angle)))
    assert a1 == pytest.approx(angle, abs=0.5)  # anticlockwise on screen
    assert (cx, cy) == pytest.approx((13.5, 13.5), abs=0.02)  # about the centre
    assert major1 == pytest.approx(major0, rel=0.03) and minor1 == pytest.approx(minor0, rel=0.1)


def test_scale_grows_the_blob():
    x = blob(2.0, 2.0)
    *_, major0, _ = moments(x)
    *_, major1, _ = moments(Augment(NO_AFFINE).apply(x, affine(scale=1.25)))
    assert major1 / major0 == pytest.approx(1.25, rel=0.03)


def test_shear_slants_a_vertical_bar():
    x = torch.zeros(1, 1, 28, 28)
    x[..., 4:24, 13:15] = 1  # vertical bar, centre column 13.5
    out = Augment(NO_AFFINE).apply(x, affine(shear=20.0))[0, 0]
    cols = torch.arange(28.0)
    for row in (6, 20):  # row centroid moves right by tan(20 deg) * (row - 13.5)
        centroid = (out[row] * cols).sum() / out[row].sum()
        assert centroid.item() == pytest.approx(
            13.5 + math.tan(math.radians(20)) * (row - 13.5), abs=0.05
        )


# ---- elastic and erasing ----------------------------------------------------------------------


def test_constant_displacement_is_a_translation():
    x = blob()
    p = AugmentParams(
        displacement=torch.tensor([2.0, -1.0])[None, :, None, None].expand(1, 2, 28, 28)
    )
    out = Augment(NO_AFFINE).apply(x, p)  # out(q) = in(q + d): content moves by -d
    want = Augment(NO_AFFINE).apply(x, affine(dx=-2.0, dy=1.0))
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)


def test_elastic_field_is_smooth_random_and_applied_with_probability():
    cfg = replace(NO_AFFINE, elastic_alpha=34.0, elastic_sigma=4.0, elastic_p=0.5)
    d = Augment(cfg, seed=0).sample(400).displacement  # (400, 2, 28, 28) pixels
    on = d.flatten(1).abs().amax(1) > 0
    assert 0.4 < on.float().mean() < 0.6
    d = d[on]
    rms = d.pow(2).mean().sqrt()
    assert 0.5 < rms < 3.0  # Simard's alpha=34, sigma=4 moves pixels by about a pixel or two
    step = (d[..., 1:] - d[..., :-1]).pow(2).mean().sqrt()
    assert step < 0.2 * rms  # smooth: neighbours move nearly alike
    assert d[0].flatten().std() > 0.1 and not torch.equal(d[0], d[1])  # random, per sample


def test_elastic_distorts_but_keeps_the_digit(digits):
    cfg = replace(NO_AFFINE, elastic_alpha=34.0, elastic_sigma=4.0, elastic_p=1.0)
    out = Augment(cfg, seed=0)(digits)
    diff = (out - digits).abs().flatten(1).mean(1)
    assert (diff > 0.01).all()  # every sample moved
    # ink is moved, not created or lost (up to the local stretching of the field)
    mass = out.flatten(1).sum(1) / digits.flatten(1).sum(1)
    assert ((mass > 0.6) & (mass < 1.4)).all() and mass.mean() == pytest.approx(1, abs=0.05)


def test_explicit_erase_box():
    x = torch.ones(2, 1, 28, 28)
    p = AugmentParams(erase=torch.tensor([[3, 5, 4, 6], [0, 0, 0, 9]]))  # second: height 0
    out = Augment(NO_AFFINE, fill=-0.5).apply(x, p)
    assert (out[0, 0, 3:7, 5:11] == -0.5).all()
    assert (out[0] == -0.5).sum() == 24
    assert torch.equal(out[1], x[1])


def test_random_erasing_area_and_probability():
    cfg = replace(NO_AFFINE, erase_p=0.5, erase_area=(0.05, 0.2))
    out = Augment(cfg, seed=0)(torch.ones(1000, 1, 28, 28))
    area = (out == 0).flatten(1).float().mean(1)
    erased = area > 0
    assert 0.45 < erased.float().mean() < 0.55
    assert area[erased].min() >= 0.03 and area[erased].max() <= 0.25  # range, up to rounding
    assert area[erased].std() > 0.02  # sizes vary
    assert (out[~erased] == 1).all()


def test_fill_value_pads_the_outside():
    out = Augment(NO_AFFINE, fill=0.25).apply(torch.ones(1, 1, 28, 28), affine(dx=5.0))
    torch.testing.assert_close(out[0, 0, :, :5], torch.full((28, 5), 0.25))
    torch.testing.assert_close(out[0, 0, :, 5:], torch.ones(28, 23))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(digits):
    cfg = augment_preset("full")
    cpu = Augment(cfg, seed=3)(digits)
    gpu = Augment(cfg, seed=3)(digits.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-4)


# ---- pen width and low resolution (the "handwriting" preset) ------------------------------


def test_stroke_width_thickens_and_thins_a_bar():
    bar = torch.zeros(3, 1, 28, 28)
    bar[..., 4:24, 12:15] = 1.0  # a vertical stroke 3 px wide
    bar = torch.cat([bar, bar[:1]])
    p = AugmentParams(stroke=torch.tensor([1.0, -1.0, 0.0, 2.0]))
    out = Augment(NO_AFFINE).apply(bar, p)
    width = (out[:, 0, 14] > 0.5).sum(1)  # across the middle row
    assert width.tolist() == [5, 1, 3, 7]  # each 3x3 max / min moves each edge by 1 px
    assert torch.equal(out[2], bar[2])
    assert out.amax(dim=(1, 2, 3)).tolist() == [1.0] * 4  # peak kept


def test_stroke_width_on_real_digits_changes_ink_as_configured(digits):
    x = digits * 255
    n = len(x)
    thick = Augment(NO_AFFINE).apply(x, AugmentParams(stroke=torch.full((n,), 1.0)))
    thin = Augment(NO_AFFINE).apply(x, AugmentParams(stroke=torch.full((n,), -0.6)))
    mass = lambda t: t.flatten(1).sum(1) / x.flatten(1).sum(1)  # noqa: E731
    assert (mass(thick) > 1.3).all() and (thick >= x - 1e-4).all()  # dilation only adds
    assert (mass(thin) < 1).all() and mass(thin).mean() < 0.75  # measured: 0.48-0.95, mean ~0.57
    assert torch.allclose(thin.amax(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3)))


@pytest.mark.parametrize("side", [14, 7])
def test_lowres_matches_area_pooling_and_bilinear_upsampling(digits, side):
    """Against torch's own ops where they agree (sides dividing 28): average pooling down,
    bilinear (align_corners=False) up, then the peak restored."""
    x = digits
    out = Augment(NO_AFFINE).apply(x, AugmentParams(lowres=torch.full((len(x),), side)))
    ref = F.interpolate(F.avg_pool2d(x, 28 // side), size=(28, 28), mode="bilinear",
                        align_corners=False)
    ref = ref * x.amax(dim=(1, 2, 3), keepdim=True) / ref.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_lowres_blurs_more_at_lower_resolution_and_28_is_identity(digits):
    x = digits[:16]

    def detail(t: torch.Tensor) -> float:  # energy of the horizontal differences
        return float((t[..., 1:] - t[..., :-1]).pow(2).mean())

    outs = {r: Augment(NO_AFFINE).apply(x, AugmentParams(lowres=torch.full((16,), r)))
            for r in (28, 20, 14, 10)}
    assert torch.equal(outs[28], x)
    levels = [detail(outs[r]) for r in (28, 20, 14, 10)]
    assert levels == sorted(levels, reverse=True) and levels[-1] < 0.6 * levels[0], levels


def test_handwriting_preset_samples_with_probabilities_and_keeps_the_other_draws():
    hw = augment_preset("handwriting")
    p = Augment(hw, seed=3).sample(4000)
    changed = p.stroke != 0
    assert abs(changed.float().mean() - hw.stroke_p) < 0.03
    assert p.stroke.min() >= hw.stroke[0] and p.stroke.max() <= hw.stroke[1]
    low = p.lowres < 28
    assert abs(low.float().mean() - hw.lowres_p) < 0.03
    assert set(p.lowres[low].tolist()) == set(range(hw.lowres[0], hw.lowres[1] + 1))
    # the new parameters are drawn last: the affine and elastic ones are those of the same
    # configuration without them (so older presets keep their random stream)
    q = Augment(replace(hw, stroke_p=0.0, lowres_p=0.0), seed=3).sample(4000)
    for name in ("angle", "scale", "translate", "shear", "displacement"):
        assert torch.equal(getattr(p, name), getattr(q, name)), name
    assert q.stroke is None and q.lowres is None
    for bad in [dict(stroke=(-2.0, 0.5)), dict(stroke=(0.5, 0.2)), dict(stroke=(0, 2.5)),
                dict(lowres=(0, 10)),
                dict(lowres_p=1.5)]:
        with pytest.raises(ValueError):
            AugmentConfig(**bad)


def test_full_ink_stretches_soft_strokes_as_preprocessing_does(digits):
    from mnistlab.preprocess import FULL_INK_SHARE

    x = digits * 255
    soft = Augment(NO_AFFINE).apply(x, AugmentParams(lowres=torch.full((len(x),), 10)))
    cfg = replace(NO_AFFINE, full_ink=FULL_INK_SHARE)
    out = Augment(cfg).apply(soft, AugmentParams())
    for a, b in zip(soft.flatten(1), out.flatten(1)):
        ink = a > 0.1 * a.max()
        full = (b[ink] >= a.max() - 1e-3).float().mean()
        assert FULL_INK_SHARE <= full <= FULL_INK_SHARE + 0.05  # the brightest quarter
        kept = (a > 0) & (b < a.max() - 1e-3)  # not clipped: one gain for every pixel
        gain = b[kept] / a[kept]
        assert gain.max() - gain.min() < 1e-3 * gain.mean() and gain.min() > 1
    assert (out >= soft - 1e-4).all() and out.max() <= 255 + 1e-3
    blurred_full = ((soft > 0.98 * 255).flatten(1).float().mean(1)).mean()
    assert blurred_full < 0.05  # the blur had left almost no full-ink pixels
