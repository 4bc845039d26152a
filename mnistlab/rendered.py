"""Training digits rendered as image files, then read back as `predict` reads them.

    images, source = render_digits(train.images, "scans", seed=0)   # (M, 28, 28) uint8

Each digit is drawn once as an encoded image file and read back through
``preprocess.preprocess_image``, the one path of ``predict`` and the server; digits the
preprocessing refuses are left out (``source`` holds the row each rendering came from). The
config field ``rendered`` adds these to a run's training split: the model learns such images
as ``predict`` will show them, which augmentation on tensors only approximates (the
low-resolution scans: docs/serving.md). The augmentation warps them but does not restyle them
again (``BatchLoader(styled=...)``).

The renderers here are the training side's own, not ``mnistlab.handwriting``'s styles: those
are what ``benchmarks/real_handwriting.py`` measures, and a model trained on the very
generator it is measured on would make the benchmark a test of itself. ``scans`` draws every
step of a low-resolution scan differently and more widely than the benchmark's
``lowres-scan`` (frame, resolution, filters, grey levels, zoom, paper, file format), so that
style stays a generator the model has not seen.

Rendering costs ~1.5 ms of CPU per digit (55,000 digits: ~80 s on 2 processes), so results
are cached under ``~/.cache/mnistlab/renders`` ($XDG_CACHE_HOME), keyed by the digits' bytes,
the renderer, the seed and the source of this module and of the preprocessing.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from . import __version__
from .data.fetch import cache_dir
from .preprocess import PreprocessError, preprocess_image

__all__ = ["STYLES", "read_back", "render_digits", "cached_renders", "scans"]

_R = Image.Resampling


def scans(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A (28, 28) uint8 digit (ink high) as a low-resolution scan, upscaled, in a file: the
    pen as drawn, 0.5 or 1 MNIST pixel wider per side; its ink box with 0-3 px of paper on
    each side, squared; taken down to 6-14 px (box, bilinear or Lanczos) in 4-256 grey levels;
    zoomed 3-16x (nearest, bilinear, bicubic or Lanczos); dark ink on light paper or (30%)
    light on dark, at drawn levels; PNG or (30%) JPEG at quality 50-95."""
    img = Image.fromarray(np.asarray(digit, np.uint8).reshape(28, 28))
    pen = rng.choice(3, p=[0.5, 0.25, 0.25])
    if pen == 1:  # half a pixel per side: dilate at twice the size
        img = img.resize((56, 56), _R.BILINEAR).filter(ImageFilter.MaxFilter(3)) \
            .resize((28, 28), _R.BOX)
    elif pen == 2:
        img = img.filter(ImageFilter.MaxFilter(3))
    a = np.asarray(img)
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    crop = a[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    top, bottom, left, right = (int(v) for v in rng.integers(0, 4, 4))
    h, w = crop.shape
    side = max(h + top + bottom, w + left + right)
    frame = np.zeros((side, side), np.uint8)
    y0 = top + (side - h - top - bottom) // 2
    x0 = left + (side - w - left - right) // 2
    frame[y0 : y0 + h, x0 : x0 + w] = crop
    r = int(rng.integers(6, 15))
    down = (_R.BOX, _R.BILINEAR, _R.LANCZOS)[int(rng.integers(3))]
    low = np.clip(np.asarray(Image.fromarray(frame).resize((r, r), down), np.float32) / 255, 0, 1)
    levels = int(rng.choice([3, 7, 15, 63, 255]))  # 4-256 grey levels
    low = np.round(low * levels) / levels
    k = int(rng.integers(3, 17))
    up = (_R.NEAREST, _R.BILINEAR, _R.BICUBIC, _R.LANCZOS)[int(rng.integers(4))]
    ink = np.clip(np.asarray(Image.fromarray(low, "F").resize((r * k, r * k), up)), 0, 1)
    paper, pen_level = rng.uniform(0.75, 1.0), rng.uniform(0.0, 0.3)
    if rng.random() < 0.3:  # light strokes on a dark ground (a screen, an inverted scan)
        paper, pen_level = 1 - paper, 1 - pen_level
    gray = np.round((paper + (pen_level - paper) * ink) * 255).astype(np.uint8)
    buf = io.BytesIO()
    if rng.random() < 0.3:
        Image.fromarray(gray).save(buf, "JPEG", quality=int(rng.integers(50, 96)))
    else:
        Image.fromarray(gray).save(buf, "PNG")
    return buf.getvalue()


# name -> renderer (digit, generator) -> file bytes; == config.RENDERED minus "none"
STYLES: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {"scans": scans}

CHUNK = 1000  # digits per task: a task's rendering takes ~1.5 s


def _read_back_chunk(args: tuple[np.ndarray, Callable, int, int, int]
                     ) -> tuple[np.ndarray, np.ndarray]:
    images, draw, seed, stream, offset = args
    out = np.zeros((len(images), 28, 28), np.uint8)
    ok = np.zeros(len(images), bool)
    for i, digit in enumerate(images):
        if not digit.any():  # nothing to draw (a blank image in a folder of the user's)
            continue
        try:
            x = preprocess_image(draw(digit, np.random.default_rng([seed, stream, offset + i])))
        except PreprocessError:
            continue
        out[i], ok[i] = np.round(x * 255), True
    return out[ok], np.flatnonzero(ok) + offset


def read_back(images: np.ndarray, draw: Callable[[np.ndarray, np.random.Generator], bytes],
              *, stream: int, seed: int = 0, workers: int = 1,
              progress: Callable[[int, int], None] | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 digits (ink high), each drawn as a file by ``draw(digit, rng)`` and
    read back by ``preprocess_image`` -> ((M, 28, 28) uint8 as ``predict`` lays them out,
    (M,) int64 source rows); M < N when preprocessing refuses some. Digit i's generator is
    seeded by (seed, stream, i), as ``handwriting.render_set`` seeds (seed, style, i), so
    the result does not depend on ``workers`` (processes; ``draw`` must then be a module-level
    function). ``progress(done, total)`` is called after each chunk of digits."""
    images = np.asarray(images, np.uint8).reshape(-1, 28, 28)
    tasks = [(images[i : i + CHUNK], draw, seed, stream, i)
             for i in range(0, len(images), CHUNK)]
    parallel = workers > 1 and len(tasks) > 1
    parts = []
    with ProcessPoolExecutor(min(workers, len(tasks))) if parallel else nullcontext() as pool:
        for part in (pool.map if parallel else map)(_read_back_chunk, tasks):
            parts.append(part)
            if progress:
                progress(min(len(parts) * CHUNK, len(images)), len(images))
    if not parts:
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64)
    return (np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]).astype(np.int64))


def render_digits(images: np.ndarray, style: str, *, seed: int = 0, workers: int = 1,
                  progress: Callable[[int, int], None] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``read_back`` with one of this module's renderers (``STYLES``), its stream being its
    place there."""
    if style not in STYLES:
        raise ValueError(f"unknown renderer {style!r}; choose from {list(STYLES)}")
    return read_back(images, STYLES[style], stream=list(STYLES).index(style), seed=seed,
                     workers=workers, progress=progress)


@functools.cache
def _code_digest() -> bytes:
    """The source of what makes a rendering: this module and the preprocessing."""
    from . import preprocess

    return hashlib.sha256(Path(__file__).read_bytes()
                          + Path(preprocess.__file__).read_bytes()).digest()


def cached_renders(images: np.ndarray, style: str, *, seed: int = 0, workers: int = 1,
                   cache: str | os.PathLike | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, bool]:
    """``render_digits`` through a cache: (renderings, source rows, found in the cache).
    ``cache``: the folder (default ``~/.cache/mnistlab/renders``); an unwritable one only
    costs the rendering next time."""
    images = np.ascontiguousarray(np.asarray(images, np.uint8).reshape(-1, 28, 28))
    key = hashlib.sha256(images.tobytes())
    key.update(f"|{style}|{seed}|{__version__}|".encode())
    key.update(_code_digest())  # a changed renderer or preprocessing is another entry
    folder = Path(cache) if cache is not None else cache_dir() / "renders"
    path = folder / f"{style}-{key.hexdigest()[:24]}.npz"
    try:
        with np.load(path) as f:
            return f["images"], f["source"], True
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # absent, unreadable or damaged: render again
    out, source = render_digits(images, style, seed=seed, workers=workers, progress=progress)
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".npz", delete=False) as f:
            tmp = f.name
            np.savez(f, images=out, source=source)
        os.replace(tmp, path)  # whole or absent, even beside another run writing it
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return out, source, False
