"""Small image plots shared by the data commands, reports and mistake galleries.

Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it is safe
in servers, threads and headless machines.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CELL_PX = 100  # default width of one grid cell in pixels; a title band of a quarter of it
SUPTITLE_PX = 30  # extra height for the figure title


def grid_shape(n: int, ncols: int | None = None) -> tuple[int, int]:
    """(rows, cols) of a grid of ``n`` cells; about square unless ``ncols`` is given."""
    if n < 1:
        raise ValueError("a grid needs at least one image")
    cols = max(1, min(n, ncols or math.ceil(math.sqrt(n))))
    return math.ceil(n / cols), cols


def grid_size_px(
    n: int, ncols: int | None = None, *, cell_px: int = CELL_PX, suptitle: bool = False
) -> tuple[int, int]:
    """(width, height) in pixels of the PNG :func:`image_grid` writes."""
    rows, cols = grid_shape(n, ncols)
    return cols * cell_px, rows * (cell_px + cell_px // 4) + (SUPTITLE_PX if suptitle else 0)


def _as_images(images) -> np.ndarray:
    if hasattr(images, "detach"):  # a torch tensor, without importing torch here
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[1] == 1:  # (N, 1, H, W)
        images = images[:, 0]
    elif images.ndim == 2 and math.isqrt(images.shape[1]) ** 2 == images.shape[1]:  # (N, H*W)
        side = math.isqrt(images.shape[1])
        images = images.reshape(-1, side, side)
    elif images.ndim == 2:  # one image
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"expected images of shape (N, H, W), found {images.shape}")
    return images


def image_grid(
    images,
    titles: Sequence[str] | None,
    path: str | os.PathLike,
    ncols: int | None = None,
    *,
    title_colors: Sequence[str | None] | None = None,
    suptitle: str | None = None,
    cell_px: int = CELL_PX,
    fontsize: float = 8.0,
    cmap: str = "gray",
) -> Path:
    """Write a PNG grid of grayscale images with a title above each; returns the path.

    ``images``: (N, H, W), (N, 1, H, W) or (N, H*W); uint8 shown on 0..255, floats on 0..1
    when they lie in it, else each image scaled to its own range (e.g. normalized input).
    ``titles``: one per image (``None`` for none; "\\n" allowed). ``title_colors``: a
    matplotlib colour per title (``None`` entries = black), e.g. red for mistakes. Long
    titles are set in a smaller font to fit their cell. The PNG is exactly
    :func:`grid_size_px` pixels.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images = _as_images(images)
    n = len(images)
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {n} images but {len(titles)} titles")
    if title_colors is not None and len(title_colors) != n:
        raise ValueError(f"got {n} images but {len(title_colors)} title colours")
    rows, cols = grid_shape(n, ncols)
    width, height = grid_size_px(n, ncols, cell_px=cell_px, suptitle=bool(suptitle))
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    top_px = SUPTITLE_PX if suptitle else 0
    cell_h = (height - top_px) / rows
    title_h = cell_h - cell_px
    unit = images.dtype == np.uint8 or (
        np.issubdtype(images.dtype, np.floating)
        and np.nanmin(images) >= 0.0
        and np.nanmax(images) <= 1.0
    )
    vmax = 255 if images.dtype == np.uint8 else 1.0
    pad = 0.04 * cell_px
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        # axes rectangle in figure fractions, image square below its title band
        left = (c * cell_px + pad) / width
        bottom = 1 - (top_px + r * cell_h + title_h + cell_px - pad) / height
        ax = fig.add_axes((left, bottom, (cell_px - 2 * pad) / width, (cell_px - 2 * pad) / height))
        kw = {"vmin": 0, "vmax": vmax} if unit else {}
        ax.imshow(img, cmap=cmap, interpolation="nearest", **kw)
        ax.set_axis_off()
        if titles is not None:
            color = (title_colors[i] if title_colors is not None else None) or "black"
            text = str(titles[i])
            longest = max((len(line) for line in text.splitlines()), default=1)
            # ~0.6 em per character: shrink long titles to the cell width, not below 5 pt
            fit = (cell_px - 2) / (0.6 * max(1, longest)) * 72 / dpi
            ax.set_title(text, fontsize=max(5.0, min(fontsize, fit)), color=color, pad=2)
    if suptitle:
        fig.text(0.5, 1 - (SUPTITLE_PX / 2) / height, suptitle, ha="center", va="center",
                 fontsize=fontsize + 3)  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, facecolor="white")
    return path
