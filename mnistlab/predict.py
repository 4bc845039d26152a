"""Predictions on user images: the ``Predictor`` used by ``mnistlab predict`` and the server.

    p = Predictor.load("runs/mnist-fast")          # a run directory or a checkpoint path
    [pred] = p.predict(["digit.jpg"])             # preprocess (preprocess.py) + model
    pred.label, pred.confidence, pred.unsure, pred.top_k, pred.input  # input: (28, 28) 0..1
    pred.ood_score, pred.not_digit                # "not a digit" (calibrated runs only)

Probabilities are calibrated (temperature scaling, calibrate.py) when the checkpoint holds a
fitted temperature, as every run trained by this version does.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .calibrate import ood_scores
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .evaluate import probabilities
from .preprocess import (
    EXTENSIONS,
    MAX_PIXELS,
    ImageSource,
    PreprocessError,
    preprocess_image,
    to_png,
)

DEFAULT_THRESHOLD = 0.5  # below this top probability a prediction is flagged "unsure"
DEFAULT_TOP_K = 3


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
            out["input"] = np.round(self.input * 255).astype(np.uint8).tolist()
        return out


class Predictor:
    """A checkpoint plus the one preprocessing path. Thread-safe for concurrent ``predict``
    calls (the model is in eval mode and is only read)."""

    def __init__(self, checkpoint: Checkpoint | str | Path, *,
                 threshold: float = DEFAULT_THRESHOLD, top_k: int = DEFAULT_TOP_K,
                 max_pixels: int = MAX_PIXELS, device: str = "cpu"):
        """``checkpoint``: a loaded ``Checkpoint``, a run directory or a checkpoint path."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in 0..1, got {threshold}")
        if not isinstance(checkpoint, Checkpoint):
            checkpoint = load_checkpoint(checkpoint, device=device)
        self.checkpoint = checkpoint
        self.classes = checkpoint.classes
        self.threshold = threshold
        self.top_k = max(1, min(top_k, len(self.classes)))
        self.max_pixels = max_pixels
        self.calibration = checkpoint.meta.get("calibration")  # None: raw softmax, no OOD score

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

    def predict_arrays(self, images01: np.ndarray, *, top_k: int | None = None) -> list[Prediction]:
        """Already-preprocessed (B, 28, 28) 0..1 images -> one ``Prediction`` each."""
        images01 = np.asarray(images01, dtype=np.float32).reshape(-1, 28, 28)
        if len(images01) == 0:
            return []
        logits = self.checkpoint.logits(self.checkpoint.normalize(images01))
        cal = self.calibration
        probs = probabilities(logits, cal["temperature"] if cal else None)
        ood = ood_scores(logits, cal) if cal else [None] * len(probs)
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


# ------------------------------------------------------------------------------ CLI


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


def _unique_name(folder: Path, stem: str, used: set[str]) -> Path:
    name, n = f"{stem}.png", 1
    while name in used:
        name, n = f"{stem}-{n}.png", n + 1
    used.add(name)
    return folder / name


def run_predict(args: argparse.Namespace) -> int:
    """``mnistlab predict``: exit 0 if every image was predicted, 1 if any failed, 2 if the
    checkpoint cannot be loaded or the arguments are wrong."""
    out, err = sys.stdout, sys.stderr
    if not 0.0 <= args.threshold <= 1.0:
        print(f"error: --threshold must be in 0..1, got {args.threshold}", file=err)
        return 2
    if args.top_k < 1:
        print(f"error: --top-k must be at least 1, got {args.top_k}", file=err)
        return 2
    try:
        predictor = Predictor.load(args.checkpoint, threshold=args.threshold, top_k=args.top_k)
    except CheckpointError as e:
        print(f"error: {e}", file=err)
        return 2
    save_dir = Path(args.save_input) if args.save_input else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    failures = 0
    chunk = 256  # images preprocessed, then classified in one batch, then printed

    def report_error(path: Path, message: str) -> None:
        nonlocal failures
        failures += 1
        if args.json:
            print(json.dumps({"file": str(path), "error": message}), file=out)
        else:
            print(f"{path}: error: {message}", file=err)

    items = find_images(args.images)
    for start in range(0, len(items), chunk):
        # (path, model input or None, error or None), in the order given
        entries: list[tuple[Path, np.ndarray | None, str | None]] = []
        for path, problem in items[start : start + chunk]:
            if problem:
                entries.append((path, None, problem))
                continue
            try:
                entries.append((path, predictor.preprocess(path), None))
            except PreprocessError as e:  # its message starts with the path already
                entries.append((path, None, str(e).removeprefix(f"{path}: ")))
        good = [x for _, x, _ in entries if x is not None]
        preds = iter(predictor.predict_arrays(np.stack(good)) if good else [])
        for path, _x, problem in entries:
            if problem is not None:
                report_error(path, problem)
                continue
            pred = next(preds)
            saved = None
            if save_dir is not None:
                saved = _unique_name(save_dir, path.stem, used)
                saved.write_bytes(to_png(pred.input))
            if args.json:
                rec = {"file": str(path), **pred.to_dict(predictor.classes)}
                if saved is not None:
                    rec["input_file"] = str(saved)
                print(json.dumps(rec), file=out)
            else:
                alts = ", ".join(f"{c} {p:.1%}" for c, p in pred.top_k)
                flag = "  (unsure)" if pred.unsure else ""
                if pred.not_digit:
                    flag += "  (not like a digit)"
                ood = "" if pred.ood_score is None else f"  ood {pred.ood_score:.2f}"
                print(f"{path}: {pred.label} ({pred.confidence:.1%}){flag}  [{alts}]{ood}",
                      file=out)
        out.flush()
    if not items:
        print("error: no images given", file=err)
        return 2
    if failures and not args.json:
        print(f"{failures} of {len(items)} image(s) could not be predicted", file=err)
    return 1 if failures else 0


def add_predict_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``predict`` on an ``argparse`` subparsers object; sets ``func=run_predict``."""
    p = subparsers.add_parser(
        "predict", help="classify image files with a trained model",
        description="Classify images (PNG, JPEG, BMP, GIF, WebP; files or folders) after "
                    "preparing them as MNIST digits were made. Exit status: 0 all predicted, "
                    "1 some images failed (each reported), 2 bad checkpoint or arguments.")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="a run directory (uses its best checkpoint) or a checkpoint path")
    p.add_argument("images", metavar="IMAGE", nargs="+",
                   help="image files, or folders searched recursively")
    p.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                   help=f"alternatives to show (default {DEFAULT_TOP_K})")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per image on stdout (errors too, with an 'error' key)")
    p.add_argument("--save-input", metavar="DIR",
                   help="save the 28x28 image the model saw for each input, as PNG")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"flag predictions below this probability as unsure "
                        f"(default {DEFAULT_THRESHOLD})")
    p.set_defaults(func=run_predict)
    return p


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``serve`` lives in ``mnistlab.serve``; re-exported so the CLI finds both commands here."""
    from .serve import add_serve_parser as add

    return add(subparsers)
