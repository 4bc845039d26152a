"""Batched data augmentation: per-sample random affine, elastic and erasing on tensors.

``Augment(cfg, seed)(x)`` transforms a float batch ``(B, C, H, W)`` on any device. Every
sample gets its own random rotation, scale, translation and shear (and optionally an elastic
distortion, an erased rectangle, a thicker or thinner stroke and a low-resolution round trip
that blurs it, the last two for real handwriting: the ``handwriting`` preset), drawn from
one CPU ``torch.Generator`` so the result is
the same on every device and can be resumed exactly (``state_dict``/``load_state_dict``).
``sample(n)`` draws the parameters and ``apply(x, params)`` applies them, so tests can pass
explicit parameters. Out-of-image pixels and erased rectangles take ``fill`` (0 = background
when the batch is on the raw pixel scale, which is how ``BatchLoader`` calls it: augment
first, normalize after).

How the warp is done, and why (the alternatives measured): docs/performance.md, "Augmentation".
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AugmentConfig", "AugmentParams", "Augment", "PRESETS", "augment_preset", "restyle"]


@dataclass(frozen=True)
class AugmentConfig:
    rotate: float = 10.0  # max |rotation|, degrees; angle ~ U(-rotate, rotate), + = anticlockwise
    scale: tuple[float, float] = (0.9, 1.1)  # zoom factor range, ~U(lo, hi); > 1 enlarges
    translate: float = 2.0  # max |shift| along each axis, pixels; ~U(-t, t) per axis
    shear: float = 0.0  # max |x-shear angle|, degrees; + moves lower rows to the right
    elastic_alpha: float = 0.0  # elastic strength: pixels of displacement per unit smoothed noise
    elastic_sigma: float = 4.0  # elastic smoothness: std of the Gaussian smoothing, pixels
    elastic_p: float = 0.0  # probability that a sample gets an elastic distortion
    erase_p: float = 0.0  # probability that a sample gets one rectangle erased to `fill`
    erase_area: tuple[float, float] = (0.02, 0.15)  # erased area, fraction of the image
    erase_ratio: tuple[float, float] = (0.3, 3.3)  # erased height/width ratio, log-uniform
    # stroke width: s ~ U(lo, hi) in units of one 3x3 dilation; s > 0 blends toward the dilated
    # image (s = 1: a 3x3 max, strokes ~2 px wider; s = 2: two of them), s < 0 toward the
    # eroded one (s = -1: a 3x3 min)
    stroke: tuple[float, float] = (0.0, 0.0)
    stroke_p: float = 0.0  # probability that a sample gets a stroke-width change
    # low resolution: the sample is area-averaged down to r x r pixels, r ~ U{lo..hi}, and
    # bilinearly upsampled back (the blur of an upscaled low-resolution scan)
    lowres: tuple[int, int] = (28, 28)
    lowres_p: float = 0.0  # probability that a sample gets the low-resolution round trip
    # > 0: at the end, stretch each sample so this share of its ink pixels is at its peak
    # (clipped), as preprocess.py does with real images (FULL_INK_SHARE); 0: off
    full_ink: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be 0 < lo <= hi, got {self.scale}")
        for name in ("rotate", "translate", "shear", "elastic_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.shear >= 90:
            raise ValueError(f"shear must be < 90 degrees, got {self.shear}")
        if self.elastic_sigma <= 0:
            raise ValueError(f"elastic_sigma must be > 0, got {self.elastic_sigma}")
        for name in ("elastic_p", "erase_p", "stroke_p", "lowres_p", "full_ink"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        a0, a1 = self.erase_area
        r0, r1 = self.erase_ratio
        if not (0 < a0 <= a1 <= 1 and 0 < r0 <= r1):
            raise ValueError(f"bad erase_area {self.erase_area} or erase_ratio {self.erase_ratio}")
        if not -1 <= self.stroke[0] <= self.stroke[1] <= 2:
            raise ValueError(f"stroke must be -1 <= lo <= hi <= 2, got {self.stroke}")
        if not 1 <= self.lowres[0] <= self.lowres[1]:
            raise ValueError(f"lowres must be 1 <= lo <= hi pixels, got {self.lowres}")

    @property
    def has_affine(self) -> bool:
        return bool(self.rotate or self.translate or self.shear or self.scale != (1.0, 1.0))

    @property
    def has_elastic(self) -> bool:
        return self.elastic_p > 0 and self.elastic_alpha > 0

    @property
    def has_erase(self) -> bool:
        return self.erase_p > 0

    @property
    def has_stroke(self) -> bool:
        return self.stroke_p > 0 and self.stroke != (0.0, 0.0)

    @property
    def has_lowres(self) -> bool:
        return self.lowres_p > 0

    @property
    def is_identity(self) -> bool:
        return not (self.has_affine or self.has_elastic or self.has_erase or self.has_stroke
                    or self.has_lowres or self.full_ink > 0)


_NO_AFFINE = dict(rotate=0.0, scale=(1.0, 1.0), translate=0.0, shear=0.0)
# elastic values after Simard et al. 2003 (alpha 34, sigma 4 on 28x28), half the samples
_ELASTIC = dict(elastic_alpha=34.0, elastic_sigma=4.0, elastic_p=0.5)
PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(**_NO_AFFINE),
    "affine": AugmentConfig(),
    "affine+elastic": AugmentConfig(**_ELASTIC),
    "full": AugmentConfig(shear=10.0, erase_p=0.5, **_ELASTIC),
    # what real images vary once preprocessed (see mnistlab/handwriting.py): pen width,
    # the blur of upscaled low-resolution scans, rotation up to 20 degrees, slant, size; ranges
    # set so that stroke widths and blur span those of the preprocessed styles (measured as
    # 2 * area / perimeter of the ink above 0.5: MNIST median 2.8 px, 90th percentile 3.9;
    # thick pens and low-resolution scans 4.4-4.9, 6.1-6.5; this preset 4.1, 6.7)
    "handwriting": AugmentConfig(rotate=20.0, scale=(0.85, 1.1), shear=10.0,
                                 stroke=(-0.5, 1.5), stroke_p=0.6, lowres=(8, 20),
                                 lowres_p=0.4, full_ink=0.25,
                                 **{**_ELASTIC, "elastic_p": 0.3}),
}


def augment_preset(name: str) -> AugmentConfig:
    """The AugmentConfig for a preset name: one of ``PRESETS`` ("none", "affine", ...)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown augmentation preset {name!r}; choose from {list(PRESETS)}"
        ) from None


@dataclass
class AugmentParams:
    """Per-sample parameters of one call, on the CPU, first dimension B.

    The four affine fields are all set or all None (no affine warp).
    """

    angle: Tensor | None = None  # (B,) degrees, + = anticlockwise on screen; None = no affine
    scale: Tensor | None = None  # (B,) zoom factor
    translate: Tensor | None = None  # (B, 2) pixels, (dx right, dy down)
    shear: Tensor | None = None  # (B,) x-shear angle, degrees
    # (B, 2, H, W) elastic offset (dx, dy) in pixels of the point each output pixel samples:
    # out(q) = in(affine^-1(q) + d(q)), so a constant d moves the content by -d
    displacement: Tensor | None = None
    erase: Tensor | None = None  # (B, 4) int64 (top, left, height, width); height 0 = none
    stroke: Tensor | None = None  # (B,) stroke-width change in 3x3 dilations (0 = none)
    lowres: Tensor | None = None  # (B,) int64 side of the low-resolution copy (H = none)

    @classmethod
    def identity(cls, n: int) -> AugmentParams:
        z = torch.zeros(n)
        return cls(angle=z, scale=torch.ones(n), translate=torch.zeros(n, 2), shear=z)

    def rows(self, index: slice | Tensor) -> AugmentParams:
        """The parameters of some samples (e.g. one rank's share of a global batch)."""
        return AugmentParams(**{k: None if v is None else v[index] for k, v in vars(self).items()})

    def unstyled(self, mask: Tensor, side: int) -> AugmentParams:
        """These parameters with no stroke change and no low-resolution round trip where
        ``mask`` (B,) is set: for samples that already show a style (rendered files, once
        preprocessed; see rendered.py). ``side``: the image height (no round trip)."""
        keep = dict(vars(self))
        if self.stroke is not None:
            keep["stroke"] = self.stroke.masked_fill(mask.to(self.stroke.device), 0.0)
        if self.lowres is not None:
            keep["lowres"] = self.lowres.masked_fill(mask.to(self.lowres.device), side)
        return AugmentParams(**keep)


@functools.cache
def gaussian_matrix(n: int, sigma: float) -> Tensor:
    """(n, n) matrix that smooths a length-n signal with a Gaussian (zero padding outside)."""
    i = torch.arange(n, dtype=torch.float64)
    k = torch.exp(-((i[:, None] - i[None, :]) ** 2) / (2 * sigma**2))
    # normalize by the full (untruncated) kernel sum, so values near the border fade to zero
    # exactly as a zero-padded convolution would
    r = torch.arange(-4 * math.ceil(sigma) - n, 4 * math.ceil(sigma) + n + 1, dtype=torch.float64)
    return (k / torch.exp(-(r**2) / (2 * sigma**2)).sum()).float()


class Augment:
    """Random per-sample augmentation of a batch; see the module docstring."""

    def __init__(self, cfg: AugmentConfig, seed: int = 0, *, fill: float = 0.0):
        self.cfg = cfg
        self.fill = fill
        self.generator = torch.Generator().manual_seed(seed)

    def __repr__(self) -> str:
        return f"Augment({self.cfg}, fill={self.fill})"

    # ---- state for exact resume -------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.generator.set_state(state["generator"])

    # ---- random parameters ------------------------------------------------------------------

    def sample(self, n: int, height: int = 28, width: int = 28) -> AugmentParams:
        """Draw parameters for n samples of size height x width (advances the generator)."""
        cfg, g = self.cfg, self.generator
        # always draw the affine numbers, so the stream does not depend on which ranges are 0
        u = torch.rand(n, 5, generator=g) * 2 - 1  # U(-1, 1)
        params = AugmentParams()
        if cfg.has_affine:
            lo, hi = cfg.scale
            params.angle = u[:, 0] * cfg.rotate
            params.scale = (u[:, 1] + 1) * ((hi - lo) / 2) + lo
            params.translate = u[:, 2:4] * cfg.translate
            params.shear = u[:, 4] * cfg.shear
        if cfg.has_elastic:
            noise = torch.rand(n, 2, height, width, generator=g) * 2 - 1
            on = torch.rand(n, generator=g) < cfg.elastic_p
            k_h = gaussian_matrix(height, cfg.elastic_sigma)
            k_w = gaussian_matrix(width, cfg.elastic_sigma)
            field = k_h @ noise @ k_w.T  # separable Gaussian smoothing, (n, 2, H, W)
            params.displacement = field * (cfg.elastic_alpha * on.float())[:, None, None, None]
        if cfg.has_erase:
            r = torch.rand(n, 5, generator=g)
            (a0, a1), (q0, q1) = cfg.erase_area, cfg.erase_ratio
            area = (a0 + (a1 - a0) * r[:, 0]) * (height * width)
            ratio = torch.exp(math.log(q0) + (math.log(q1) - math.log(q0)) * r[:, 1])  # h / w
            h = (area * ratio).sqrt().round().clamp(1, height)
            w = (area / ratio).sqrt().round().clamp(1, width)
            top = (r[:, 2] * (height - h + 1)).floor()
            left = (r[:, 3] * (width - w + 1)).floor()
            h = h * (r[:, 4] < cfg.erase_p)  # height 0: this sample is not erased
            params.erase = torch.stack([top, left, h, w], 1).long()
        # drawn last, so the presets without them keep their random stream
        if cfg.has_stroke:
            r = torch.rand(n, 2, generator=g)
            lo, hi = cfg.stroke
            params.stroke = (lo + (hi - lo) * r[:, 0]) * (r[:, 1] < cfg.stroke_p)
        if cfg.has_lowres:
            r = torch.rand(n, 2, generator=g)
            lo, hi = cfg.lowres
            side = (lo + (r[:, 0] * (hi - lo + 1)).floor()).clamp(max=hi).long()
            params.lowres = torch.where(r[:, 1] < cfg.lowres_p, side.clamp(max=height), height)
        return params

    # ---- applying them ----------------------------------------------------------------------

    def __call__(self, x: Tensor) -> Tensor:
        """Augment x (B, C, H, W); uint8 input comes back as float32 on the same 0..255 scale."""
        if self.cfg.is_identity:
            return x
        return self.apply(x, self.sample(x.shape[0], x.shape[-2], x.shape[-1]))

    def apply(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Apply explicit parameters to x (B, C, H, W): stroke width and low resolution (the
        peak kept), then warp (bilinear), then erase."""
        if not x.is_floating_point():
            x = x.float()
        b, _, h, w = x.shape
        if params.stroke is not None or params.lowres is not None:
            x = restyle(x, params.stroke, params.lowres)
        if params.angle is not None or params.displacement is not None:
            grid = sampling_grid(params, b, h, w, dtype=x.dtype, device=x.device)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            if self.fill != 0:  # grid_sample pads with 0: blend `fill` in where it padded
                inside = F.grid_sample(
                    torch.ones_like(x[:, :1]), grid, padding_mode="zeros", align_corners=False
                )
                x = x + (1 - inside) * self.fill
        if params.erase is not None:
            e = params.erase.to(x.device)
            top, left, eh, ew = (e[:, i, None, None, None] for i in range(4))  # (B, 1, 1, 1)
            rows = torch.arange(h, device=x.device)[:, None]  # (H, 1)
            cols = torch.arange(w, device=x.device)  # (W,)
            inside_rows = (rows >= top) & (rows < top + eh)  # (B, 1, H, 1)
            inside_cols = (cols >= left) & (cols < left + ew)  # (B, 1, 1, W)
            x = x.masked_fill(inside_rows & inside_cols, self.fill)
        if self.cfg.full_ink > 0:
            x = stretch_ink(x, self.cfg.full_ink, self.fill)
        return x


def stretch_ink(x: Tensor, share: float, fill: float = 0.0) -> Tensor:
    """Per sample of x (B, C, H, W): scale so that the brightest ``share`` of the ink pixels
    (those above 10% of the peak, measured from ``fill``) reach the peak; clipped there."""
    v = (x - fill).flatten(1)  # (B, C*H*W)
    peak = v.amax(1, keepdim=True)
    ink = v > 0.1 * peak
    ranked = torch.where(ink, v, torch.zeros_like(v)).sort(1, descending=True).values
    k = (ink.sum(1, keepdim=True) * share).long().clamp(min=0, max=v.shape[1] - 1)
    level = ranked.gather(1, k)  # the ink value with `share` of the ink above it
    scale = torch.where(level > 0, peak / level, torch.ones_like(level))
    out = torch.minimum(v * scale, peak)
    return (out + fill).view_as(x)


def restyle(x: Tensor, stroke: Tensor | None, lowres: Tensor | None) -> Tensor:
    """Per-sample stroke width and low resolution on x (B, C, H, W), each sample's peak kept
    (preprocessing stretches real strokes to full ink, so a thinned or blurred digit is seen
    at full contrast). ``stroke`` (B,) in 3x3 dilations (-1..2), ``lowres`` (B,) sides in
    pixels."""
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    y = x
    if stroke is not None:
        s = stroke.to(x.device, x.dtype)[:, None, None, None]
        dilated, eroded = _extremes3(y)
        if bool((s > 1).any()):  # beyond one dilation: toward a second one
            twice = _extremes3(dilated)[0]
            dilated = dilated + (s - 1).clamp(min=0) * (twice - dilated)
        y = y + s.clamp(0, 1) * (dilated - y) + (-s).clamp(min=0) * (eroded - y)
    if lowres is not None:
        h, w = x.shape[-2:]
        mh = _lowres_bank(h, x.dtype, x.device)[lowres.to(x.device)]  # (B, H, H)
        mw = _lowres_bank(w, x.dtype, x.device)[lowres.clamp(max=w).to(x.device)]  # (B, W, W)
        y = mh[:, None] @ y @ mw[:, None].transpose(-1, -2)  # down and up, rows and columns
    top = y.amax(dim=(1, 2, 3), keepdim=True)
    return y * torch.where(top > 0, peak / top, torch.ones_like(top))


def _extremes3(x: Tensor) -> tuple[Tensor, Tensor]:
    """3x3 maximum and minimum of x (B, C, H, W), zeros outside (background); separable
    shifted slices, ~3x faster on the CPU than ``max_pool2d`` with stride 1."""
    p = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    rows_max = torch.maximum(torch.maximum(p[..., :-2, :], p[..., 1:-1, :]), p[..., 2:, :])
    rows_min = torch.minimum(torch.minimum(p[..., :-2, :], p[..., 1:-1, :]), p[..., 2:, :])
    hi = torch.maximum(torch.maximum(rows_max[..., :w], rows_max[..., 1 : w + 1]),
                       rows_max[..., 2:])
    lo = torch.minimum(torch.minimum(rows_min[..., :w], rows_min[..., 1 : w + 1]),
                       rows_min[..., 2:])
    return hi, lo


@functools.cache
def _lowres_bank(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(n + 1, n, n): entry r maps a length-n signal to its area-average at r samples and back
    by linear interpolation (align_corners=False), i.e. up_r @ down_r; entries 0 and n are the
    identity."""
    bank = torch.eye(n, dtype=torch.float64).repeat(n + 1, 1, 1)
    for r in range(1, n):
        edges = torch.arange(r + 1, dtype=torch.float64) * n / r  # low-res cell i: [e_i, e_i+1)
        j = torch.arange(n, dtype=torch.float64)
        overlap = (torch.minimum(edges[1:, None], j + 1) - torch.maximum(edges[:-1, None], j))
        down = overlap.clamp(min=0) * (r / n)  # (r, n), rows sum to 1
        src = ((j + 0.5) * r / n - 0.5).clamp(0, r - 1)  # where output pixel j samples
        i0 = src.floor().long()
        i1 = (i0 + 1).clamp(max=r - 1)
        up = torch.zeros(n, r, dtype=torch.float64)
        up[j.long(), i0] += 1 - (src - i0)
        up[j.long(), i1] += src - i0
        bank[r] = up @ down
    return bank.to(device, dtype)


@functools.cache
def _grid_basis(h: int, w: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(6, H*W*2) basis: grid[b, y, x] = (L[b] @ (xn, yn) + o[b]) = coef[b] @ basis, with
    coef = (L00, L10, L01, L11, o0, o1) and (xn, yn) the normalized pixel centres."""
    yn, xn = torch.meshgrid(
        (torch.arange(h, dtype=torch.float64) * 2 + 1) / h - 1,  # pixel centres in [-1, 1]
        (torch.arange(w, dtype=torch.float64) * 2 + 1) / w - 1,
        indexing="ij",
    )
    basis = torch.zeros(6, h, w, 2, dtype=torch.float64)
    for k in range(2):  # k = 0: the x coordinate of the grid, 1: y
        basis[k, ..., k] = xn
        basis[2 + k, ..., k] = yn
        basis[4 + k, ..., k] = 1
    return basis.view(6, -1).to(device, dtype)


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def sampling_grid(
    params: AugmentParams, b: int, h: int, w: int, *, dtype=torch.float32, device=None
) -> Tensor:
    """The (B, H, W, 2) grid for ``F.grid_sample`` (align_corners=False) of these parameters.

    The forward map (input pixel p to output pixel q, about the image centre c) is
    ``q = c + t + s R(angle) Shear(shear) (p - c)``; grid_sample needs its inverse, evaluated
    at every output pixel, plus the elastic displacement, in normalized coordinates.
    """
    # the per-sample 2x3 maps are tiny: NumPy float64 (no thread-pool dispatch per small op)
    n = b if params.angle is None else len(params.angle)
    if params.angle is None:  # no affine part: identity
        th, sh, inv_s, t = np.zeros(n), np.zeros(n), np.ones(n), np.zeros((n, 2))
    else:
        th, sh = np.deg2rad(_numpy(params.angle)), np.deg2rad(_numpy(params.shear))
        inv_s, t = 1 / _numpy(params.scale), _numpy(params.translate)
    # inverse linear part A = Shear^-1 R^-1 / s in pixel units (y down), maps q - c - t to p - c
    cos, sin, tan = np.cos(th), np.sin(th), np.tan(sh)
    a = np.stack([(cos - tan * sin), (-sin - tan * cos), sin, cos], 1).reshape(n, 2, 2)
    a *= inv_s[:, None, None]
    # normalized coordinates: q - c = D qn with D = diag(W/2, H/2), so the normalized map is
    # pn = L qn + o with L = D^-1 A D and o = -D^-1 A t
    d = np.array([w / 2, h / 2])
    lin = a * d[None, None, :] / d[None, :, None]
    off = -np.einsum("bij,bj->bi", a, t) / d
    coef = np.concatenate([lin[:, :, 0], lin[:, :, 1], off], 1)  # (B, 6)
    # the grid is linear in the 6 coefficients: one (B, 6) @ (6, H*W*2) matmul makes all of it
    coef = torch.from_numpy(coef).to(device, dtype)
    grid = (coef @ _grid_basis(h, w, dtype, coef.device)).view(n, h, w, 2)
    if params.displacement is not None:  # elastic: pixels -> normalized units, (B, H, W, 2)
        disp = params.displacement.to(device, dtype).permute(0, 2, 3, 1)
        grid = grid + disp * torch.tensor([2 / w, 2 / h], device=device, dtype=dtype)
    return grid
