"""Training digits rendered as the files people send, then preprocessed as `predict` does.

    images, source = render_digits(train.images, "lowres-scan", seed=0)   # (M, 28, 28) uint8

Each digit is drawn once in a style of ``mnistlab.handwriting`` (an encoded PNG or JPEG, as
a user would send it) and read back through ``preprocess.preprocess_image``, the one path of
``predict`` and the server; digits the preprocessing refuses are left out (``source`` holds
the row each rendering came from). The config field ``rendered_style`` adds these to a run's
training split: the model learns the style as ``predict`` will show it, which augmentation on
tensors only approximates (the low-resolution scans: docs/serving.md). The augmentation does
not restyle them again (``BatchLoader(styled=...)``).

Rendering costs ~1.5 ms of CPU per digit (55,000 digits: ~80 s on 2 processes), so results
are cached under ``~/.cache/mnistlab/renders`` ($XDG_CACHE_HOME), keyed by the digits' bytes,
the style, the seed and the version of mnistlab.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from . import __version__
from .data.fetch import cache_dir
from .handwriting import STYLES, render
from .preprocess import PreprocessError, preprocess_image

__all__ = ["render_digits", "cached_renders"]

CHUNK = 1000  # digits per task: a task's rendering takes ~1.5 s


def _render_chunk(args: tuple[np.ndarray, str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    images, style, seed, offset = args
    code = list(STYLES).index(style)
    out = np.zeros((len(images), 28, 28), np.uint8)
    ok = np.zeros(len(images), bool)
    for i, digit in enumerate(images):
        if not digit.any():  # nothing to draw (a blank image in a folder of the user's)
            continue
        # (seed, style, row, 1): the trailing 1 keeps these draws apart from the benchmarks'
        # (seed, style, index), which render other digits anyway
        rng = np.random.default_rng([seed, code, offset + i, 1])
        try:
            x = preprocess_image(render(digit, style, rng))
        except PreprocessError:
            continue
        out[i], ok[i] = np.round(x * 255), True
    return out[ok], np.flatnonzero(ok) + offset


def render_digits(images: np.ndarray, style: str, *, seed: int = 0, workers: int = 1,
                  progress: Callable[[int, int], None] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(N, 28, 28) uint8 digits (ink high) -> ((M, 28, 28) uint8 renderings as ``predict``
    lays them out, (M,) int64 source rows); M < N when preprocessing refuses some.
    Deterministic in ``seed`` whatever ``workers`` (processes) is. ``progress(done, total)``
    is called after each chunk of digits."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {list(STYLES)}")
    images = np.asarray(images, np.uint8).reshape(-1, 28, 28)
    tasks = [(images[i : i + CHUNK], style, seed, i) for i in range(0, len(images), CHUNK)]
    parts = []
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(min(workers, len(tasks))) as pool:
            for part in pool.map(_render_chunk, tasks):
                parts.append(part)
                if progress:
                    progress(min(len(parts) * CHUNK, len(images)), len(images))
    else:
        for task in tasks:
            parts.append(_render_chunk(task))
            if progress:
                progress(min(len(parts) * CHUNK, len(images)), len(images))
    if not parts:
        return np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64)
    return (np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]).astype(np.int64))


def cached_renders(images: np.ndarray, style: str, *, seed: int = 0, workers: int = 1,
                   cache: str | os.PathLike | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, bool]:
    """``render_digits`` through a cache: (renderings, source rows, found in the cache).
    ``cache``: the folder (default ``~/.cache/mnistlab/renders``); an unwritable one only
    costs the rendering next time."""
    images = np.ascontiguousarray(np.asarray(images, np.uint8).reshape(-1, 28, 28))
    key = hashlib.sha256(images.tobytes())
    key.update(f"|{style}|{seed}|{__version__}".encode())
    folder = Path(cache) if cache is not None else cache_dir() / "renders"
    path = folder / f"{style}-{key.hexdigest()[:24]}.npz"
    try:
        with np.load(path) as f:
            return f["images"], f["source"], True
    except (OSError, KeyError, ValueError):  # absent, unreadable or damaged: render again
        pass
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
