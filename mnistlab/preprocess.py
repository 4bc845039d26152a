"""One path from any user image to a 28x28 MNIST-style model input.

MNIST digits were made in a specific way (LeCun et al.): the binary NIST digit was cropped
to its ink, scaled to fit a 20x20 box keeping its aspect ratio (the antialiasing made the
grey levels), and placed in a 28x28 field so that its centre of mass sits at the centre.
Ink is bright on a dark background. A model trained on MNIST has only ever seen digits made
this way, so a photo or a drawing must be made the same way before it is classified:

    decode (PNG, JPEG, BMP, GIF first frame, WebP; EXIF rotation applied; size-checked)
    -> flatten alpha onto white -> grayscale 0..1
    -> a working size: an area-averaged copy of at most 160 px when the digit keeps 80 px
       there (COARSE_SIDE, DIGIT_SIDE; else larger, up to the full size)
    -> paper from the border (median), ink at the far end of the histogram from it;
       polarity: dark ink on light paper is inverted, so ink is high
    -> paper level subtracted (a smooth surface under uneven light or a shadow), noise
       averaged and gated, specks dropped, contrast stretched so the strokes reach 1.0
    -> crop to the ink's bounding box -> scale to fit 20x20 (aspect kept, antialiased)
    -> place in 28x28 with the centre of mass at (14, 14)
    -> float32 (28, 28) in 0..1, ink high

The paper is not the median pixel: a thick, soft digit (an upscaled low-resolution scan)
can cover most of its frame, and then the median is ink. Nor is the ink/paper split Otsu's
threshold: with a shadow the histogram has three modes (lit paper, shadowed paper, ink)
and Otsu may split the paper from its shadow. The border is paper unless a digit runs off
every edge, and the ink is what departs furthest from it.

Normalization with the model's own statistics is ``Checkpoint.normalize``; it is not done
here, so this output is also what is shown to people as "the image the model saw".
"""

from __future__ import annotations

import io
import math
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import MnistlabError
from .limits import MAX_FILE_BYTES, MAX_PIXELS

# Formats Pillow may decode here (anything else is refused before decoding).
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
MIME_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/gif", "image/webp")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")

WORK_SIDE = 1024  # larger images are box-averaged down first; the digit ends up 20 px anyway
# The ink is first looked for on a copy area-averaged to at most COARSE_SIDE px, and kept when
# the digit spans at least DIGIT_SIDE px there (4x the 20-px box: more detail than the final
# antialiasing can use); otherwise it is looked for again at the size where it does, or at
# full size. A 280x280 canvas is worked at 140x140, ~4x less work; a small digit on a large
# page, or faint strokes that averaging would drown, at the full size as before.
COARSE_SIDE = 160
DIGIT_SIDE = 80
SIZE = 28  # output field
BOX = 20  # the digit's bounding box is scaled to fit BOX x BOX
# Where MNIST puts the centre of mass, in pixel-index coordinates (row, col): measured on the
# 10,000 test digits as (13.99, 14.01) +- 0.29, i.e. half a pixel below/right of 13.5.
CENTRE = 14.0
MIN_CONTRAST = 0.08  # ink must differ from the background by this much (0..1), else blank
MIN_SNR = 3.0  # ... and by this many noise standard deviations (uniform noise is refused)
BORDER = 1 / 32  # the border ring that shows the paper: this fraction of the shorter side
NOISE_LEVEL = 0.03  # noisier images are box-averaged until their pixel noise is about this
FULL_INK_SHARE = 0.25  # at least this share of the digit's ink pixels is stretched to 1.0
_BBOX_LEVEL = 0.02  # after contrast stretching, ink below this is treated as background
_RESAMPLE = Image.Resampling.LANCZOS

ImageSource = Image.Image | bytes | bytearray | memoryview | str | os.PathLike


class PreprocessError(MnistlabError, ValueError):
    """An image cannot be turned into a model input; the message says why."""


class UnreadableImageError(PreprocessError):
    """The data is not an image in an accepted format, or it is damaged."""


class ImageTooLargeError(PreprocessError):
    """The image has more pixels than allowed (a decompression-bomb guard)."""


class EmptyImageError(PreprocessError):
    """The image is blank: no ink stands out from the background."""


# ------------------------------------------------------------------------------ decode


def _prefix(src: ImageSource) -> str:
    """Messages about a file start with its path; messages about bytes need no subject."""
    return f"{src}: " if isinstance(src, (str, os.PathLike)) else ""


def _read_image_file(path: Path, name: str) -> bytes:
    """The bytes of a regular image file of at most MAX_FILE_BYTES: a device (/dev/zero), a
    named pipe (which would block) or a huge file is refused before anything is read."""
    try:
        st = path.stat()
    except OSError as e:
        raise UnreadableImageError(f"{name}cannot read file ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableImageError(f"{name}not a regular file (a device, pipe or folder)")
    if st.st_size > MAX_FILE_BYTES:
        raise ImageTooLargeError(f"{name}file of {st.st_size:,} bytes, more than the allowed "
                                 f"{MAX_FILE_BYTES:,}")
    try:
        with open(path, "rb") as f:
            return f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise UnreadableImageError(f"{name}cannot read file ({e.strerror})") from None


def open_image(src: ImageSource, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode the first frame of ``src`` (bytes, a path or a PIL image), EXIF-rotated.

    Raises ``UnreadableImageError`` or ``ImageTooLargeError``; the size is checked from the
    header, before any pixel data is decoded.
    """
    name = _prefix(src)
    if isinstance(src, Image.Image):
        img = src
    else:
        if isinstance(src, (str, os.PathLike)):
            data = _read_image_file(Path(src), name)
        else:
            data = bytes(src)
        if not data:
            raise UnreadableImageError(f"{name}empty file (0 bytes)")
        try:
            img = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(f"{name}more than the allowed {max_pixels:,} pixels ({e})"
                                     ) from None
        except Image.UnidentifiedImageError:
            raise UnreadableImageError(
                f"{name}not an image in an accepted format (PNG, JPEG, BMP, GIF, WebP)"
            ) from None
        except Exception as e:  # any decoder failure on untrusted bytes means "unreadable"
            raise UnreadableImageError(f"{name}cannot decode image ({e})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageTooLargeError(f"{name}{w}x{h} = {w * h:,} pixels is more than the "
                                 f"allowed {max_pixels:,}")
    if w < 1 or h < 1:
        raise UnreadableImageError(f"{name}image has no pixels ({w}x{h})")
    try:
        # A freshly opened GIF/WebP animation is at its first frame; asking for n_frames
        # would walk (and decode) every frame, which a hostile file can make expensive.
        img.load()  # decode now, so truncated data fails here with a clear message
        img = ImageOps.exif_transpose(img)  # phone photos carry their rotation in EXIF
    except Exception as e:  # truncated or corrupt pixel data (OSError, SyntaxError, ...)
        raise UnreadableImageError(f"{name}damaged or truncated image data ({e})") from None
    return img


# ------------------------------------------------------------------------------ grayscale


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def to_gray(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W) float32 gray in 0..1 (1 = white), alpha flattened onto white, and the alpha
    channel (or None). Images larger than ``WORK_SIDE`` are box-averaged down."""
    alpha = None
    try:
        if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit grayscale
            a = np.asarray(img, dtype=np.float32)
            top = 1.0 if img.mode == "F" and a.max() <= 1 else 255.0
            if img.mode.startswith("I;16") or a.max() > 255:
                top = 65535.0
            gray_img = Image.fromarray(np.clip(a / top, 0, 1).astype(np.float32), "F")
        elif _has_alpha(img):
            rgba = img.convert("RGBA")
            alpha = rgba.getchannel("A")
            if alpha.getextrema()[0] == 255:  # opaque everywhere (e.g. a browser canvas)
                gray_img, alpha = rgba.convert("L"), None
            else:
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                gray_img = Image.alpha_composite(white, rgba).convert("L")
        else:
            gray_img = img.convert("L")
    except Exception as e:  # exotic modes Pillow cannot convert
        raise UnreadableImageError(f"cannot convert {img.mode} image to grayscale ({e})") from None
    factor = math.ceil(max(gray_img.size) / WORK_SIDE)
    if factor > 1:  # area-average: also averages away sensor noise
        gray_img = gray_img.reduce(factor)
        alpha = alpha.reduce(factor) if alpha is not None else None
    gray = np.asarray(gray_img, dtype=np.float32)
    if gray_img.mode == "L":
        gray = gray / 255.0
    if alpha is not None:
        alpha = np.asarray(alpha, dtype=np.float32) / 255.0
    return gray, alpha


# ------------------------------------------------------------------------------ ink


def _pad_edge(a: np.ndarray, r: int) -> np.ndarray:
    """``np.pad(a, r, mode="edge")`` for a 2-D array, without its general machinery (which
    costs more than the rest of a 3x3 mean on a small image)."""
    h, w = a.shape
    p = np.empty((h + 2 * r, w + 2 * r), a.dtype)
    p[r : r + h, r : r + w] = a
    p[:r, r : r + w] = a[0]
    p[r + h :, r : r + w] = a[-1]
    p[:, :r] = p[:, r : r + 1]
    p[:, r + w :] = p[:, r + w - 1 : r + w]
    return p


def _pad_zero(a: np.ndarray, r: int) -> np.ndarray:
    """``np.pad(a, r)`` (zeros) for a 2-D array, likewise."""
    h, w = a.shape
    p = np.zeros((h + 2 * r, w + 2 * r), a.dtype)
    p[r : r + h, r : r + w] = a
    return p


def _shifted_sum(mask: np.ndarray, radius: int) -> np.ndarray:
    """For each pixel, how many pixels of ``mask`` lie in its (2r+1)^2 neighbourhood."""
    p = _pad_zero(mask.astype(np.uint8), radius)
    h, w = mask.shape
    rows = np.zeros((h + 2 * radius, w), np.uint8)
    for dx in range(2 * radius + 1):  # separable: along rows, then along columns
        rows += p[:, dx : dx + w]
    out = np.zeros((h, w), np.uint8)
    for dy in range(2 * radius + 1):
        out += rows[dy : dy + h]
    return out


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    p = _pad_zero(mask, radius)
    h, w = mask.shape
    rows = np.zeros((h + 2 * radius, w), bool)
    for dx in range(2 * radius + 1):  # separable: along rows, then along columns
        rows |= p[:, dx : dx + w]
    out = np.zeros((h, w), bool)
    for dy in range(2 * radius + 1):
        out |= rows[dy : dy + h]
    return out


def _box3(a: np.ndarray) -> np.ndarray:
    """3x3 mean (edges replicated); separable: along rows, then along columns."""
    p = _pad_edge(a, 1)
    rows = p[:, :-2] + p[:, 1:-1] + p[:, 2:]
    return (rows[:-2] + rows[1:-1] + rows[2:]) / 9.0


def _box(a: np.ndarray, k: int) -> np.ndarray:
    """k x k mean (k odd, edges replicated), from an integral image."""
    if k <= 1:
        return a
    r = k // 2
    s = np.zeros((a.shape[0] + k, a.shape[1] + k))
    s[1:, 1:] = _pad_edge(a, r).astype(np.float64).cumsum(0).cumsum(1)
    return ((s[k:, k:] - s[:-k, k:] - s[k:, :-k] + s[:-k, :-k]) / (k * k)).astype(np.float32)


def _sweep(p: np.ndarray, k: int, op) -> np.ndarray:
    """k x k minimum (op=np.minimum) or maximum (np.maximum) of an already padded (H, W)
    array, 'valid' part only: (H - k + 1, W - k + 1). Separable: columns, then rows."""
    h, w = p.shape[0] - k + 1, p.shape[1] - k + 1
    out = p[:h]
    for d in range(1, k):
        out = op(out, p[d : d + h])
    res = out[:, :w]
    for d in range(1, k):
        res = op(res, out[:, d : d + w])
    return res


def quantiles(a: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """``np.percentile(a, qs)`` (its default 'linear' interpolation) from one partition:
    the same values, without NumPy's general quantile machinery, which costs several times
    more than the partition itself on the small arrays here."""
    a = a.ravel()
    n = a.size
    pos = [q / 100 * (n - 1) for q in qs]
    lows = [math.floor(x) for x in pos]
    part = np.partition(a, sorted({i for lo in lows for i in (lo, min(lo + 1, n - 1))}))
    out = []
    for x, lo in zip(pos, lows):
        v0, v1 = float(part[lo]), float(part[min(lo + 1, n - 1)])
        out.append(v0 + (x - lo) * (v1 - v0))
    return out


def _median(a: np.ndarray) -> float:
    return quantiles(a, (50,))[0]


def _odd(v: float) -> int:
    k = max(1, math.ceil(v))
    return k + 1 - k % 2


def border(a: np.ndarray) -> np.ndarray:
    """The pixels of the ring around the image (``BORDER`` of the shorter side, >= 1 px)."""
    h, w = a.shape
    b = max(1, round(BORDER * min(h, w)))
    if 2 * b >= min(h, w):
        return a.ravel()
    return np.concatenate([a[:b].ravel(), a[-b:].ravel(), a[b:-b, :b].ravel(),
                           a[b:-b, -b:].ravel()])


def noise_sigma(a: np.ndarray) -> float:
    """Robust std of pixel noise in (H, W): from second differences along rows and columns,
    which vanish on flat areas and linear ramps (soft, upscaled edges) and have variance
    6 sigma^2 for white noise; median absolute value, so strokes' edges do not count."""
    if a.size > 65536:  # every other row / column is plenty for a median
        a = a[::2, ::2]
    along_rows, along_cols = a[:, :-2] - 2 * a[:, 1:-1] + a[:, 2:], a[:-2] - 2 * a[1:-1] + a[2:]
    n = along_rows.size + along_cols.size
    # A clean image (a drawing, a rendered file) is mostly exactly flat: when the zeros
    # reach past the middle, the median is 0 without sorting anything.
    if n == 0 or n - np.count_nonzero(along_rows) - np.count_nonzero(along_cols) >= n // 2 + 2:
        return 0.0
    d = np.abs(np.concatenate([along_rows.ravel(), along_cols.ravel()]))
    return 1.4826 * _median(d) / math.sqrt(6)


def stroke_width(mask: np.ndarray) -> float:
    """Mean width of the strokes in a boolean (H, W) mask, pixels: 2 * area / perimeter
    (a stroke of length L and width w has area L w and perimeter ~2 L)."""
    p = _pad_zero(mask, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    edge = int((mask & ~inner).sum())
    return 2.0 * float(mask.sum()) / max(edge, 1)


def background(ink: np.ndarray, size: int, paper: float, limit: float) -> np.ndarray:
    """The paper level under an ink-high (H, W) image, for uneven light and shadows: a
    morphological opening (minimum, then maximum over size x size windows) removes every
    structure narrower than ``size`` (the strokes) and keeps broad ones and ramps. Outside
    the image the border is continued, except ink on it (above ``limit``), which continues
    as ``paper``: a digit that touches the frame still has paper beyond it. Computed on a
    copy area-averaged so that the window is ~9 px, then smoothed and upsampled."""
    h, w = ink.shape
    f = max(1, size // 9)
    a = np.asarray(Image.fromarray(ink.astype(np.float32), "F").reduce(f)) if f > 1 else ink
    k = _odd(size / f)
    r = k // 2
    p = _pad_edge(a, r)
    ring = np.ones(p.shape, bool)
    ring[r:-r, r:-r] = False
    p[ring & (p > limit)] = paper
    opened = _sweep(_pad_edge(_sweep(p, k, np.minimum), r), k, np.maximum)
    opened = _box(opened, k)
    if f == 1:
        return opened
    up = Image.fromarray(opened, "F").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(up, dtype=np.float32)


def ink_map(gray: np.ndarray, alpha: np.ndarray | None = None, *,
            invert: bool | None = None) -> np.ndarray:
    """Gray (H, W) in 0..1 -> ink (H, W) in 0..1: background 0, strokes ~1.

    The paper is what the border shows; the ink is the far end of the histogram from it,
    whatever share of the frame it covers. ``invert``: None detects the polarity (dark ink
    on light paper, or light on a dark screen); True/False force it. Raises
    ``EmptyImageError`` when no ink stands out from the paper and its noise.
    """
    if float(gray.max() - gray.min()) < MIN_CONTRAST and alpha is not None \
            and float(alpha.max() - alpha.min()) >= MIN_CONTRAST:
        # Strokes in one colour on a transparent canvas (e.g. white on transparent): after
        # flattening onto white nothing is left, but the alpha channel is the drawing.
        gray, invert = alpha, False
    smooth = _box3(gray)  # single noisy pixels keep 1/9 of their depth; a 1-px line 1/3
    lo, hi = float(smooth.min()), float(smooth.max())
    if hi - lo < MIN_CONTRAST:
        raise EmptyImageError("blank image: no ink stands out from the background")
    paper = _median(border(smooth))  # the paper's level: what the border shows
    if invert is None:  # light paper: the border is nearer the light end than the dark one
        invert = paper > (lo + hi) / 2
    ink = 1.0 - gray if invert else gray  # (H, W), ink high
    smooth = 1.0 - smooth if invert else smooth
    paper = 1.0 - paper if invert else paper
    contrast = float(smooth.max()) - paper
    sigma = noise_sigma(ink)
    if contrast < max(MIN_CONTRAST, MIN_SNR * sigma):
        raise EmptyImageError("blank image: no ink stands out from the background"
                              + (" and its noise" if contrast >= MIN_CONTRAST else ""))

    # Paper level: uniform if the border is (it shows lighting and shadows); otherwise the
    # strokes are removed by an opening ~2.5x their width (soft edges too) and what is left
    # is subtracted, but never more than half the contrast.
    limit = paper + 0.5 * contrast
    ring_lo, ring_hi = quantiles(border(smooth), (5, 95))
    bg: float | np.ndarray = paper
    if ring_hi - ring_lo > 0.1 * contrast + 2 * sigma:
        size = _odd(min(2.5 * stroke_width(smooth > limit) + 2, max(ink.shape) / 2))
        bg = np.minimum(background(smooth, size, paper, limit), limit)
    k = _odd(sigma / NOISE_LEVEL)  # denoise: white noise falls as 1/k under a k x k mean
    x = np.clip(_box(ink, k) - bg - 3.0 * sigma / k, 0.0, None)  # gated above the noise

    # Strokes: pixels well above the noise, with at least two stroke neighbours, which
    # removes isolated specks (salt noise, dust) but keeps 1-px lines.
    positive = x[x > 0]
    if positive.size == 0:
        raise EmptyImageError("blank image: no ink stands out from the background")
    peak = quantiles(positive, (99,))[0]
    mask = x > max(0.3 * peak, MIN_CONTRAST)
    mask &= _shifted_sum(mask, 1) >= 3  # itself + 2 neighbours
    if not mask.any():
        raise EmptyImageError("blank image: only isolated specks, no strokes")
    peak = quantiles(x[mask], (99,))[0]  # the strokes' own level, not a stray speck's
    if peak < MIN_CONTRAST:
        raise EmptyImageError("blank image: no ink stands out from the background")
    # Keep the antialiased fringe next to strokes (wider on big images, where soft edges
    # span more pixels); drop everything far from them.
    radius = max(2, round(max(x.shape) / 128))
    return np.clip(x / peak, 0.0, 1.0) * _dilate(mask, radius)


# ------------------------------------------------------------------------------ MNIST layout


def center_of_mass(a: np.ndarray) -> tuple[float, float]:
    """(row, col) centre of mass of a non-negative (H, W) array, in pixel-index coordinates."""
    total = float(a.sum())
    rows = np.arange(a.shape[0], dtype=np.float64)
    cols = np.arange(a.shape[1], dtype=np.float64)
    return float(a.sum(1) @ rows) / total, float(a.sum(0) @ cols) / total


def ink_box(ink: np.ndarray) -> tuple[slice, slice] | None:
    """The (rows, cols) slices of the bounding box of the ink above ``_BBOX_LEVEL`` in an
    (H, W) ink map, or None when there is none."""
    on = ink > _BBOX_LEVEL
    ys, xs = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
    if not ys.size:
        return None
    return slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)


def mnist_layout(ink: np.ndarray) -> np.ndarray:
    """Ink (H, W) 0..1 -> (28, 28) float32: cropped, scaled to fit 20x20, centred by mass."""
    box = ink_box(ink)
    if box is None:
        raise EmptyImageError("blank image: no ink")
    crop = np.where(ink > _BBOX_LEVEL, ink, 0.0)[box].astype(np.float32)
    h, w = crop.shape
    scale = BOX / max(h, w)
    nh, nw = max(1, min(BOX, round(h * scale))), max(1, min(BOX, round(w * scale)))
    digit = Image.fromarray(crop, "F").resize((nw, nh), _RESAMPLE)
    digit = np.clip(np.asarray(digit, dtype=np.float32), 0.0, None)  # (nh, nw); Lanczos rings
    top = float(digit.max())
    if top <= 0:
        raise EmptyImageError("blank image: no ink left after scaling")
    # MNIST strokes reach full ink over their core (the NIST digits were binary): in 90% of
    # MNIST digits at least a quarter of the ink pixels are saturated (median 40%). Stretch
    # once more at the final size, where averaging has removed the noise, so that the
    # brightest quarter of the ink is full: soft, upscaled or thin strokes come out as MNIST's.
    top = quantiles(digit[digit > 0.1 * top], (100 * (1 - FULL_INK_SHARE),))[0]
    digit = np.minimum(digit / top, 1.0)

    # Integer translation, as MNIST did: no resampling blur. Clip what falls outside.
    cy, cx = center_of_mass(digit)
    oy, ox = round(CENTRE - cy), round(CENTRE - cx)
    out = np.zeros((SIZE, SIZE), np.float32)
    y0, x0 = max(oy, 0), max(ox, 0)
    y1, x1 = min(oy + nh, SIZE), min(ox + nw, SIZE)
    out[y0:y1, x0:x1] = digit[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return out


def _reduced(a: np.ndarray | None, factor: int) -> np.ndarray | None:
    """(H, W) float32 area-averaged by ``factor`` (edge blocks averaged over what they hold)."""
    if a is None or factor == 1:
        return a
    return np.asarray(Image.fromarray(a.astype(np.float32, copy=False), "F").reduce(factor))


def ink_side(ink: np.ndarray) -> int:
    """The longer side of the bounding box of the ink (what ``mnist_layout`` crops), px."""
    box = ink_box(ink)
    return 0 if box is None else max(s.stop - s.start for s in box)


def working_ink(gray: np.ndarray, alpha: np.ndarray | None = None, *,
                invert: bool | None = None) -> np.ndarray:
    """``ink_map`` at the smallest working size that keeps the digit ``DIGIT_SIDE`` px long
    (see ``COARSE_SIDE``): the ink of a large image, at a size in between or at full size."""
    factor = math.ceil(max(gray.shape) / COARSE_SIDE)
    if factor > 1:
        try:
            ink = ink_map(_reduced(gray, factor), _reduced(alpha, factor), invert=invert)
            side = ink_side(ink)
            if side >= DIGIT_SIDE:
                return ink
            factor = max(1, side * factor // DIGIT_SIDE)
        except EmptyImageError:  # faint or thin strokes may average away: look at full size
            factor = 1
    return ink_map(_reduced(gray, factor), _reduced(alpha, factor), invert=invert)


def preprocess_image(src: ImageSource, *, max_pixels: int = MAX_PIXELS,
                     invert: bool | None = None) -> np.ndarray:
    """Any image (bytes, path or PIL image) -> (28, 28) float32 in 0..1, ink high, laid out
    as MNIST digits are. Raises a ``PreprocessError`` subclass with a readable message:
    ``UnreadableImageError``, ``ImageTooLargeError`` or ``EmptyImageError``."""
    img = open_image(src, max_pixels=max_pixels)
    gray, alpha = to_gray(img)
    return mnist_layout(working_ink(gray, alpha, invert=invert))


def to_png(image01: np.ndarray) -> bytes:
    """A (28, 28) 0..1 array as an 8-bit grayscale PNG (white ink on black, as MNIST)."""
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(image01, 0, 1) * 255).astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()
