"""Predictions on user images: the ``Predictor`` used by ``mnistlab predict`` and the server.

    p = Predictor.load("runs/mnist-fast")          # a run directory or a checkpoint path
    [pred] = p.predict(["digit.jpg"])             # preprocess (preprocess.py) + model
    pred.label, pred.confidence, pred.unsure, pred.top_k, pred.input  # input: (28, 28) 0..1
    pred.ood_score, pred.not_digit                # "not a digit" (calibrated runs only)

Probabilities are calibrated (temperature scaling, calibrate.py) when the checkpoint holds a
fitted temperature, as every run trained by this version does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .calibrate import ood_scores
from .checkpoint import Checkpoint, load_checkpoint
from .errors import CheckpointError
from .evaluate import probabilities
from .limits import DEFAULT_THRESHOLD, DEFAULT_TOP_K
from .preprocess import (
    EXTENSIONS,
    MAX_PIXELS,
    ImageSource,
    PreprocessError,
    preprocess_image,
)

RUNTIMES = ("torch", "onnx")  # onnx: an exported model run by ONNX Runtime (mnistlab[onnx])

@dataclass(frozen=True)
class Prediction:
    label: str  # the predicted class name
    index: int  # its class index
    confidence: float  # its probability
    unsure: bool  # confidence < the predictor's threshold
    top_k: list[tuple[str, float]]  # (class name, probability), most likely first
    probabilities: np.ndarray  # (num_classes,) float32, index = class
    input: np.ndarray  # (28, 28) float32 0..1, ink high: what the model saw
    # share of validation digits that look more digit-like (energy score, calibrate.py):
    # 0.5 typical, >= 0.99 flagged; None when the checkpoint is not calibrated
    ood_score: float | None = None
    not_digit: bool | None = None  # ood_score >= the calibration's threshold (0.99)

    def to_dict(self, classes: Sequence[str], *, with_input: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "index": self.index,
            "confidence": round(self.confidence, 6),
            "unsure": self.unsure,
            "top_k": [{"label": c, "probability": round(p, 6)} for c, p in self.top_k],
            "probabilities": {c: round(float(p), 6) for c, p in zip(classes, self.probabilities)},
            "ood_score": None if self.ood_score is None else round(self.ood_score, 4),
            "not_digit": self.not_digit,
        }
        if with_input:
            out["input"] = self.input_u8().tolist()
        return out

    def input_u8(self) -> np.ndarray:
        """The (28, 28) input the model saw as 0..255 integers, ink high."""
        return np.round(self.input * 255).astype(np.uint8)


class Predictor:
    """A checkpoint plus the one preprocessing path. Thread-safe for concurrent ``predict``
    calls (the model is in eval mode and is only read)."""

    def __init__(self, checkpoint: Checkpoint | str | Path, *,
                 threshold: float = DEFAULT_THRESHOLD, top_k: int = DEFAULT_TOP_K,
                 max_pixels: int = MAX_PIXELS, device: str = "cpu", runtime: str = "torch",
                 threads: int | None = None):
        """``checkpoint``: a loaded ``Checkpoint``, a run directory or a checkpoint path.
        ``runtime="onnx"``: run the ONNX export of the run (or a .onnx file) with ONNX
        Runtime, using ``threads`` intra-op threads (None: its default)."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in 0..1, got {threshold}")
        if runtime not in RUNTIMES:
            raise CheckpointError(f"runtime: must be one of {', '.join(RUNTIMES)}, "
                                  f"got {runtime!r}")
        if not isinstance(checkpoint, Checkpoint) and runtime == "onnx":
            from .export import load_onnx

            checkpoint = load_onnx(checkpoint, threads=threads)
        elif not isinstance(checkpoint, Checkpoint):
            checkpoint = load_checkpoint(checkpoint, device=device)
        self.checkpoint = checkpoint
        self.classes = checkpoint.classes
        self.threshold = threshold
        self.top_k = max(1, min(top_k, len(self.classes)))
        self.max_pixels = max_pixels
        # None: raw softmax and no "not a digit" score (a run from before calibration)
        self.calibration = checkpoint.meta.get("calibration")

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> Predictor:
        """From a run directory (its best checkpoint) or a checkpoint path."""
        return cls(path, **kwargs)

    @property
    def meta(self) -> dict[str, Any]:
        return self.checkpoint.meta

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """(28, 28) float32 0..1; raises ``PreprocessError`` for a bad or blank image."""
        return preprocess_image(image, max_pixels=self.max_pixels)

    def predict_arrays(self, images: np.ndarray, *, top_k: int | None = None) -> list[Prediction]:
        """Images already in the MNIST layout -> one ``Prediction`` each: (28, 28) or
        (N, 28, 28) (or (N, 1, 28, 28)), ink high on a zero background, as uint8 0..255
        (what torchvision and Keras hand out: scaled here) or floats in 0..1. Nothing else
        is guessed: other ranges are refused with a PreprocessError."""
        images01 = as_mnist_arrays(images)
        if len(images01) == 0:
            return []
        logits = self.checkpoint.logits(self.checkpoint.normalize(images01))
        cal = self.calibration
        probs = probabilities(logits, cal["temperature"] if cal else None)
        ood = ood_scores(logits, cal) if cal and "ood" in cal else [None] * len(probs)
        k = self.top_k if top_k is None else max(1, min(top_k, len(self.classes)))
        out = []
        for p, x, o in zip(probs, images01, ood):
            order = np.argsort(-p, kind="stable")[:k]
            i = int(order[0])
            out.append(Prediction(
                label=self.classes[i], index=i, confidence=float(p[i]),
                unsure=bool(p[i] < self.threshold),
                top_k=[(self.classes[j], float(p[j])) for j in order],
                probabilities=p.astype(np.float32), input=x,
                ood_score=None if o is None else float(o),
                not_digit=None if o is None else bool(o >= cal["ood"]["threshold"]),
            ))
        return out

    def predict(self, images: Iterable[ImageSource], *, top_k: int | None = None
                ) -> list[Prediction]:
        """Images (bytes, paths or PIL images) -> predictions, in one batch.

        Raises the first image's ``PreprocessError``; use ``preprocess`` per image and
        ``predict_arrays`` to keep going past bad images (as the CLI does).
        """
        arrays = [self.preprocess(im) for im in images]
        if not arrays:
            return []
        return self.predict_arrays(np.stack(arrays), top_k=top_k)

    def predict_one(self, image: ImageSource, *, top_k: int | None = None) -> Prediction:
        return self.predict_arrays(self.preprocess(image)[None], top_k=top_k)[0]


def as_mnist_arrays(images: Any) -> np.ndarray:
    """(N, 28, 28) float32 in 0..1 from MNIST-layout arrays; PreprocessError otherwise."""
    a = np.asarray(images)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1:] != (28, 28):
        raise PreprocessError(f"arrays must be (28, 28) or (N, 28, 28) images, got shape "
                              f"{a.shape}; pass image files or PIL images to preprocess them")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise PreprocessError(f"arrays must be uint8 0..255 or floats 0..1, got {a.dtype}")
    a = a.astype(np.float32)
    if a.size and (not np.isfinite(a).all() or a.min() < 0 or a.max() > 1):
        raise PreprocessError(
            f"float arrays must hold values in 0..1 (ink high), got {a.min():g}..{a.max():g}; "
            "for 0..255 values pass uint8, for normalized inputs undo the normalization")
    return a


# ------------------------------------------------------------------------------ files


def find_images(paths: Sequence[str | Path]) -> list[tuple[Path, str | None]]:
    """Named files as given, folders searched recursively for image files (sorted).

    Returns (path, error) pairs; error is set for a path that does not exist or a folder
    with no images, so it can be reported in line with the others.
    """
    out: list[tuple[Path, str | None]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file()
                           and f.suffix.lower() in EXTENSIONS
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                out.append((p, f"no image files ({', '.join(EXTENSIONS)}) in this folder"))
            out.extend((f, None) for f in found)
        elif p.exists():
            out.append((p, None))
        else:
            out.append((p, "no such file or folder"))
    return out
