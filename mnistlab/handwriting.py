"""MNIST digits rendered as the image files people really send (PIL + NumPy, no torch).

    data = render(digit, "paper-shadow", np.random.default_rng(0))   # PNG or JPEG bytes
    for style, i, data in render_set(images, seed=0): ...            # every style, seeded

``digit`` is a (28, 28) uint8 MNIST image (ink high). Each style imitates one way a real
image differs from MNIST's own layout; its random parameters are drawn from the generator:

| style | what it imitates |
|---|---|
| ``mnist-png`` | the digit itself as a PNG (the baseline: nothing to undo) |
| ``lowres-scan`` | a 7-12 px scan (17 grey levels, often thick) upscaled 4-20x, bicubic or bilinear: blurry, thick, filling its frame |
| ``paper-shadow`` | a phone photo: dark ink on off-white paper, a lighting gradient, a soft-edged shadow, JPEG |
| ``jpeg-low`` | dark on white, saved as JPEG at quality 8-25 |
| ``sensor-noise`` | grey paper, Gaussian pixel noise (std 0.04-0.12) |
| ``thick`` / ``thin`` | a wider or narrower pen: dilated / eroded by 0.5-1.5 / 0.25-0.5 MNIST pixels per side |
| ``small-offcentre`` | a 20-48 px digit anywhere on a 300-800 px canvas |
| ``rotated`` | turned by up to +-20 degrees |
| ``rgba`` | strokes on a transparent canvas (black, blue or white ink), as canvas exports |

Used by ``benchmarks/real_handwriting.py`` and the preprocessing tests.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["STYLES", "render", "render_set", "scan_pixels"]

_BICUBIC = Image.Resampling.BICUBIC


def _encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _u8(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8))


def _upscaled(digit: np.ndarray, k: float, resample=_BICUBIC) -> np.ndarray:
    """(28k, 28k) float ink 0..1 (ink high)."""
    side = max(1, round(28 * k))
    big = Image.fromarray(digit).resize((side, side), resample)
    return np.asarray(big, dtype=np.float32) / 255


def _on_paper(ink: np.ndarray, paper: float, ink_level: float) -> np.ndarray:
    """Ink coverage 0..1 -> gray 0..1 of ink at ``ink_level`` on paper at ``paper``."""
    return paper + (ink_level - paper) * np.clip(ink, 0, 1)


def _place(ink: np.ndarray, canvas: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Put the (h, w) ink at a random place on a (H, W) canvas of zeros, wholly inside."""
    h, w = ink.shape
    out = np.zeros(canvas, np.float32)
    y, x = int(rng.integers(0, canvas[0] - h + 1)), int(rng.integers(0, canvas[1] - w + 1))
    out[y : y + h, x : x + w] = ink
    return out


def _dark_on_white(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _on_paper(ink, rng.uniform(0.9, 1.0), rng.uniform(0.0, 0.15))


# ------------------------------------------------------------------------------ styles


def mnist_png(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return _encode(Image.fromarray(digit))


def scan_pixels(digit: np.ndarray, rng: np.random.Generator, size: int | None = None,
                margin: int = 0) -> np.ndarray:
    """The scan behind ``lowres-scan``: (r, r) float32 ink 0..1 in 17 levels, r drawn from
    7-12 (or ``size``), before any upscaling. What the style's image holds, at most: the
    benchmarks compare a model trained on these pixels with one that sees the upscaled file.
    ``size`` and ``margin`` as in :func:`lowres_scan`, whose first draws these are."""
    img = Image.fromarray(digit)
    if rng.random() < 0.5:  # a thick pen
        img = img.filter(ImageFilter.MaxFilter(3))
    a = np.asarray(img)
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    crop = a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    side = max(crop.shape) + int(rng.integers(0, 3))  # the digit fills its frame
    drawn = int(rng.integers(7, 13))  # the scan's resolution, pixels (drawn either way)
    r = drawn if size is None else size
    if margin:  # paper around the digit, which keeps its resolution
        r = round(r * (side + 2 * margin) / side)
        side += 2 * margin
    square = np.zeros((side, side), np.uint8)
    y0, x0 = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
    low = np.asarray(Image.fromarray(square).resize((r, r), Image.Resampling.BOX), np.float32)
    return np.round(low / 255 * 16) / 16  # 17 grey levels, as 4x4 block counts give


def lowres_scan(digit: np.ndarray, rng: np.random.Generator, size: int | None = None,
                margin: int = 0) -> bytes:
    """``size`` fixes the scan's resolution (the digit's frame, pixels) instead of drawing it
    from 7-12; ``margin`` adds that many MNIST pixels of paper on every side before the scan,
    the digit keeping its resolution. The other draws are the same either way."""
    low = scan_pixels(digit, rng, size, margin)
    r = len(low)
    k = int(rng.integers(4, 21))
    resample = _BICUBIC if rng.random() < 0.5 else Image.Resampling.BILINEAR
    big = np.asarray(Image.fromarray(low, "F").resize((r * k, r * k), resample), np.float32)
    if rng.random() < 0.7:
        return _encode(_u8(1 - big))  # dark on white, as such scans are usually shown
    return _encode(_u8(big))


def paper_shadow(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    ink = _upscaled(digit, rng.uniform(3, 8))
    side = ink.shape[0]
    canvas = (round(side * rng.uniform(1.2, 2.0)), round(side * rng.uniform(1.2, 2.0)))
    ink = _place(ink, canvas, rng)
    h, w = canvas
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy, xx = yy / h - 0.5, xx / w - 0.5
    # reflectance times light: a gradient of +-15% and a soft-edged shadow over a half-plane
    reflect = _on_paper(ink, rng.uniform(0.75, 0.95), rng.uniform(0.05, 0.25))
    gx, gy = rng.uniform(-0.3, 0.3, 2)
    light = 1 + gx * xx + gy * yy
    theta = rng.uniform(0, 2 * np.pi)
    dist = np.cos(theta) * xx + np.sin(theta) * yy - rng.uniform(-0.3, 0.3)
    edge = rng.uniform(0.04, 0.12)  # softness, fraction of the canvas
    light = light * (1 - rng.uniform(0.2, 0.35) / (1 + np.exp(-dist / edge)))
    gray = reflect * light + rng.normal(0, 0.01, canvas)
    tint = np.array([1.0, rng.uniform(0.94, 1.0), rng.uniform(0.85, 0.97)], np.float32)
    rgb = np.clip(gray[..., None] * tint, 0, 1)
    return _encode(Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB"), "JPEG",
                   quality=int(rng.integers(75, 95)))


def jpeg_low(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    gray = _dark_on_white(_upscaled(digit, rng.uniform(2, 6)), rng)
    return _encode(_u8(gray).convert("RGB"), "JPEG", quality=int(rng.integers(8, 26)))


def sensor_noise(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    ink = _upscaled(digit, rng.uniform(3, 8))
    gray = _on_paper(ink, rng.uniform(0.6, 0.85), rng.uniform(0.1, 0.3))
    return _encode(_u8(gray + rng.normal(0, rng.uniform(0.04, 0.12), gray.shape)))


def _stroke(digit: np.ndarray, rng: np.random.Generator, thicker: bool) -> bytes:
    ink = Image.fromarray(np.round(_upscaled(digit, 4) * 255).astype(np.uint8))
    # at 4x, a filter of size s moves each edge by (s - 1) / 2 px = (s - 1) / 8 MNIST px
    size = int(rng.choice([5, 7, 9, 11, 13])) if thicker else int(rng.choice([3, 5]))
    ink = ink.filter(ImageFilter.MaxFilter(size) if thicker else ImageFilter.MinFilter(size))
    return _encode(_u8(_dark_on_white(np.asarray(ink, np.float32) / 255, rng)))


def thick(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return _stroke(digit, rng, thicker=True)


def thin(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return _stroke(digit, rng, thicker=False)


def small_offcentre(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    ink = _upscaled(digit, rng.uniform(20, 48) / 20)  # the digit (20 of 28 px) is 20-48 px
    canvas = (int(rng.integers(300, 601)), int(rng.integers(400, 801)))
    return _encode(_u8(_dark_on_white(_place(ink, canvas, rng), rng)))


def rotated(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    ink = Image.fromarray(np.round(_upscaled(digit, 4) * 255).astype(np.uint8))
    ink = ink.rotate(rng.uniform(-20, 20), resample=_BICUBIC, expand=True, fillcolor=0)
    return _encode(_u8(_dark_on_white(np.asarray(ink, np.float32) / 255, rng)))


def rgba(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    alpha = np.round(_upscaled(digit, rng.uniform(4, 10)) * 255).astype(np.uint8)
    colour = [(0, 0, 0), (30, 60, 200), (255, 255, 255)][int(rng.integers(0, 3))]
    out = np.zeros((*alpha.shape, 4), np.uint8)
    out[..., :3] = colour
    out[..., 3] = alpha
    return _encode(Image.fromarray(out, "RGBA"))


STYLES: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "mnist-png": mnist_png,
    "lowres-scan": lowres_scan,
    "paper-shadow": paper_shadow,
    "jpeg-low": jpeg_low,
    "sensor-noise": sensor_noise,
    "thick": thick,
    "thin": thin,
    "small-offcentre": small_offcentre,
    "rotated": rotated,
    "rgba": rgba,
}


def render(digit: np.ndarray, style: str, rng: np.random.Generator) -> bytes:
    """A (28, 28) uint8 MNIST digit (ink high) as an encoded image file in ``style``."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {list(STYLES)}")
    digit = np.asarray(digit, dtype=np.uint8).reshape(28, 28)
    return STYLES[style](digit, rng)


def render_set(images: np.ndarray, styles: Sequence[str] = tuple(STYLES), *, seed: int = 0
               ) -> Iterator[tuple[str, int, bytes]]:
    """(style, index, file bytes) for every style and every (28, 28) image, in that order.
    Each image's generator is seeded by (seed, style, index), so a style's images do not
    depend on which other styles or how many images are rendered."""
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        raise ValueError(f"unknown style {unknown[0]!r}; choose from {list(STYLES)}")
    for s in styles:
        code = list(STYLES).index(s)
        for i, digit in enumerate(images):
            yield s, i, render(digit, s, np.random.default_rng([seed, code, i]))
