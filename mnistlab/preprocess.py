"""One path from any user image to a 28x28 MNIST-style model input.

MNIST digits were made in a specific way (LeCun et al.): the binary NIST digit was cropped
to its ink, scaled to fit a 20x20 box keeping its aspect ratio (the antialiasing made the
grey levels), and placed in a 28x28 field so that its centre of mass sits at the centre.
Ink is bright on a dark background. A model trained on MNIST has only ever seen digits made
this way, so a photo or a drawing must be made the same way before it is classified:

    decode (PNG, JPEG, BMP, GIF first frame, WebP; EXIF rotation applied; size-checked)
    -> flatten alpha onto white -> grayscale 0..1
    -> polarity: dark ink on light paper is inverted, so ink is high
    -> background removed, noise gated, contrast stretched so the strokes reach 1.0
    -> crop to the ink's bounding box -> scale to fit 20x20 (aspect kept, antialiased)
    -> place in 28x28 with the centre of mass at (14, 14)
    -> float32 (28, 28) in 0..1, ink high

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
SIZE = 28  # output field
BOX = 20  # the digit's bounding box is scaled to fit BOX x BOX
# Where MNIST puts the centre of mass, in pixel-index coordinates (row, col): measured on the
# 10,000 test digits as (13.99, 14.01) +- 0.29, i.e. half a pixel below/right of 13.5.
CENTRE = 14.0
MIN_CONTRAST = 0.08  # ink must differ from the background by this much (0..1), else blank
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


def _shifted_sum(mask: np.ndarray, radius: int) -> np.ndarray:
    """For each pixel, how many pixels of ``mask`` lie in its (2r+1)^2 neighbourhood."""
    p = np.pad(mask.astype(np.uint8), radius)
    h, w = mask.shape
    out = np.zeros((h, w), np.uint8)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out += p[dy : dy + h, dx : dx + w]
    return out


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    p = np.pad(mask, radius)
    h, w = mask.shape
    rows = np.zeros((h + 2 * radius, w), bool)
    for dx in range(2 * radius + 1):  # separable: along rows, then along columns
        rows |= p[:, dx : dx + w]
    out = np.zeros((h, w), bool)
    for dy in range(2 * radius + 1):
        out |= rows[dy : dy + h]
    return out


def _box3(a: np.ndarray) -> np.ndarray:
    """3x3 mean (edges replicated)."""
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    return sum(p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0


def ink_map(gray: np.ndarray, alpha: np.ndarray | None = None, *,
            invert: bool | None = None) -> np.ndarray:
    """Gray (H, W) in 0..1 -> ink (H, W) in 0..1: background 0, strokes ~1.

    ``invert``: None detects the polarity (ink is whatever departs further from the
    background: dark on light paper, or light on a dark screen); True/False force it.
    Raises ``EmptyImageError`` when no ink stands out.
    """
    if float(gray.max() - gray.min()) < MIN_CONTRAST and alpha is not None \
            and float(alpha.max() - alpha.min()) >= MIN_CONTRAST:
        # Strokes in one colour on a transparent canvas (e.g. white on transparent): after
        # flattening onto white nothing is left, but the alpha channel is the drawing.
        gray, invert = alpha, False
    bg = float(np.median(gray))
    if invert is None:
        # The smoothed extremes ignore single-pixel noise; a 1-px stroke keeps 1/3 of its depth.
        smooth = _box3(gray)
        invert = bool(bg - smooth.min() > smooth.max() - bg)
    ink = 1.0 - gray if invert else gray
    bg = 1.0 - bg if invert else bg
    x = ink - bg  # (H, W), background ~0
    sigma = 1.4826 * float(np.median(np.abs(x)))  # robust noise level (MAD); 0 if clean
    x = np.clip(x - 3.0 * sigma, 0.0, None)
    if float(x.max()) < MIN_CONTRAST:
        raise EmptyImageError("blank image: no ink stands out from the background")

    # Strokes: pixels well above the noise, with at least two stroke neighbours, which
    # removes isolated specks (salt noise, dust) but keeps 1-px lines.
    positive = x[x > 0]
    peak = float(np.percentile(positive, 99))
    mask = x > max(0.3 * peak, MIN_CONTRAST)
    mask &= _shifted_sum(mask, 1) >= 3  # itself + 2 neighbours
    if not mask.any():
        raise EmptyImageError("blank image: only isolated specks, no strokes")
    peak = float(np.percentile(x[mask], 99))  # the strokes' own level, not a stray speck's
    if peak < MIN_CONTRAST:
        raise EmptyImageError("blank image: no ink stands out from the background")
    # Keep the antialiased fringe next to strokes; drop everything far from them.
    return np.clip(x / peak, 0.0, 1.0) * _dilate(mask, 2)


# ------------------------------------------------------------------------------ MNIST layout


def center_of_mass(a: np.ndarray) -> tuple[float, float]:
    """(row, col) centre of mass of a non-negative (H, W) array, in pixel-index coordinates."""
    total = float(a.sum())
    rows = np.arange(a.shape[0], dtype=np.float64)
    cols = np.arange(a.shape[1], dtype=np.float64)
    return float(a.sum(1) @ rows) / total, float(a.sum(0) @ cols) / total


def mnist_layout(ink: np.ndarray) -> np.ndarray:
    """Ink (H, W) 0..1 -> (28, 28) float32: cropped, scaled to fit 20x20, centred by mass."""
    on = ink > _BBOX_LEVEL
    if not on.any():
        raise EmptyImageError("blank image: no ink")
    ys, xs = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
    crop = np.where(on, ink, 0.0)[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1].astype(np.float32)
    h, w = crop.shape
    scale = BOX / max(h, w)
    nh, nw = max(1, min(BOX, round(h * scale))), max(1, min(BOX, round(w * scale)))
    digit = Image.fromarray(crop, "F").resize((nw, nh), _RESAMPLE)
    digit = np.clip(np.asarray(digit, dtype=np.float32), 0.0, None)  # (nh, nw); Lanczos rings
    top = float(digit.max())
    if top <= 0:
        raise EmptyImageError("blank image: no ink left after scaling")
    # MNIST strokes reach full ink. Stretch once more at the final size, where averaging has
    # removed the noise that made the full-size peak uncertain (and thin strokes grey).
    digit = np.minimum(digit / top, 1.0)

    # Integer translation, as MNIST did: no resampling blur. Clip what falls outside.
    cy, cx = center_of_mass(digit)
    oy, ox = round(CENTRE - cy), round(CENTRE - cx)
    out = np.zeros((SIZE, SIZE), np.float32)
    y0, x0 = max(oy, 0), max(ox, 0)
    y1, x1 = min(oy + nh, SIZE), min(ox + nw, SIZE)
    out[y0:y1, x0:x1] = digit[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return out


def preprocess_image(src: ImageSource, *, max_pixels: int = MAX_PIXELS,
                     invert: bool | None = None) -> np.ndarray:
    """Any image (bytes, path or PIL image) -> (28, 28) float32 in 0..1, ink high, laid out
    as MNIST digits are. Raises a ``PreprocessError`` subclass with a readable message:
    ``UnreadableImageError``, ``ImageTooLargeError`` or ``EmptyImageError``."""
    img = open_image(src, max_pixels=max_pixels)
    gray, alpha = to_gray(img)
    return mnist_layout(ink_map(gray, alpha, invert=invert))


def to_png(image01: np.ndarray) -> bytes:
    """A (28, 28) 0..1 array as an 8-bit grayscale PNG (white ink on black, as MNIST)."""
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(image01, 0, 1) * 255).astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()
