"""Low-resolution scans: how close to the same digits as tensors can any model get?

    python benchmarks/lowres_oracle.py [RUN ...] [--split val] [--n 2000] [--epochs 10]

The `lowres-scan` style of mnistlab/handwriting.py scans a digit at 7-12 px and upscales the
scan 4-20x; issue 13 asks every style to read within 1 point of the same digits as tensors.
This benchmark trains two specialists on that style alone and sets them beside the given
runs (e.g. the `handwriting` recipe), all on the same seeded digits:

- ``file specialist``: the training digits (the 55,000 of the seed-0 split) rendered as
  lowres-scan files with other draws than the evaluated ones and taken through
  ``Predictor.preprocess``, the path of `mnistlab predict`: the best a model can do behind
  today's preprocessing;
- ``pixel specialist``: the same scans' own pixels (``scan_pixels``: r x r, 17 levels,
  before upscaling), resized to 20x20 and centred in 28x28, no file and no preprocessing:
  what the style's images hold at all, for this model size.

Both train with the `handwriting` recipe's model, optimizer and epochs, with affine
augmentation (the scans bring their own blur), on a folder dataset written to a temporary
directory (nothing kept). Each given RUN is scored on the evaluated scans' files through the
predict path, and on the same digits as tensors. The evaluated digits are those of
``benchmarks/real_handwriting.py`` with the same --split, --n and --seed (the same files).
Nothing is chosen here, so --split test is a final figure; make choices on --split val.
The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from real_handwriting import labels_of  # noqa: E402  (this folder)

import mnistlab  # noqa: E402
from mnistlab import data  # noqa: E402
from mnistlab.data.idx import write_idx  # noqa: E402
from mnistlab.engines import get_engine  # noqa: E402
from mnistlab.errors import MnistlabError  # noqa: E402
from mnistlab.handwriting import STYLES, render, scan_pixels  # noqa: E402
from mnistlab.predict import Predictor  # noqa: E402
from mnistlab.rendered import read_back  # noqa: E402

STYLE = "lowres-scan"
CODE = list(STYLES).index(STYLE)  # as render_set seeds each image: (seed, style, index)


def _lowres(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return render(digit, STYLE, rng)


def _files(images: np.ndarray, seed: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """The digits as lowres-scan files through the predict path: ((M, 28, 28) uint8, the
    (M,) rows preprocessing accepted)."""
    return read_back(images, _lowres, stream=CODE, seed=seed, workers=workers)


def _pixels(images: np.ndarray, seed: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """The same scans' own pixels, resized to 20x20 in the middle of 28x28 (~0.25 ms each:
    no processes)."""
    out = np.zeros((len(images), 28, 28), np.uint8)
    for i, digit in enumerate(images):
        low = scan_pixels(digit, np.random.default_rng([seed, CODE, i]))
        up = Image.fromarray(low, "F").resize((20, 20), Image.Resampling.BILINEAR)
        out[i, 4:24, 4:24] = np.clip(np.round(np.asarray(up) * 255), 0, 255)
    return out, np.arange(len(images))


def _epochs_only(line: str) -> None:
    """The specialists' progress: their epoch lines, not their reports."""
    if line.startswith("epoch "):
        print(f"    {line}", flush=True)


def write_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """IDX files of a folder dataset (mnistlab.data.folders): PREFIX-images/-labels."""
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images.astype(np.uint8))
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))


def percent(p: Predictor, x: np.ndarray, rows: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy through predict_arrays of x, the images of ``rows`` of ``labels``; a refused
    image (a row missing) counts as an error."""
    pred = np.full(len(labels), -1)
    if len(rows):
        pred[rows] = labels_of(p, x.astype(np.float32) / 255.0)[0]
    return 100 * float((pred == labels).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="run directories to set beside the specialists")
    ap.add_argument("--n", type=int, default=2000, help="evaluated digits (default 2000)")
    ap.add_argument("--seed", type=int, default=0, help="picks the digits and renders them")
    ap.add_argument("--split", choices=["val", "test"], default="val")
    ap.add_argument("--epochs", type=int, default=10, help="specialists' epochs (default 10)")
    ap.add_argument("--model-args", default="", metavar="JSON",
                    help="the specialists' fast-cnn arguments (default: the recipe's)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads and render processes")
    args = ap.parse_args(argv)
    if args.n < 1 or args.epochs < 1 or args.threads < 1:
        ap.error("--n, --epochs and --threads must be at least 1")
    try:
        model_args = json.loads(args.model_args) if args.model_args else None
    except json.JSONDecodeError as e:
        ap.error(f"--model-args: not JSON ({e})")
    if model_args is not None and not isinstance(model_args, dict):
        ap.error("--model-args: a JSON object, e.g. '{\"widths\": [64, 128]}'")
    extra = {"model_args": model_args} if model_args is not None else {}
    try:  # bad arguments, runs or data fail in one line now, not after minutes of rendering
        if model_args is not None:
            get_engine("torch").build("fast-cnn", model_args, 10)
        predictors = [Predictor.load(r) for r in args.runs]
        train = data.load("mnist", "train", seed=0)  # the seed-0 split's 55,000: no val digit
        digits = data.load("mnist", args.split, seed=0)
    except MnistlabError as e:
        ap.error(str(e))
    print(f"load average {os.getloadavg()[0]:.2f}; {args.split} split, {args.n} digits, "
          f"seed {args.seed}, specialists {args.epochs} epochs"
          + (f", model_args {args.model_args}" if args.model_args else ""), flush=True)

    pick = np.sort(np.random.default_rng(args.seed).choice(
        len(digits), min(args.n, len(digits)), replace=False))  # as real_handwriting.py
    images, labels = digits.images.reshape(-1, 28, 28)[pick], digits.labels[pick]
    train_images = train.images.reshape(-1, 28, 28)

    report: dict = {"split": args.split, "n": int(len(pick)), "seed": args.seed,
                    "epochs": args.epochs, "model_args": model_args, "models": {}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lowres-oracle-") as tmp:
        evaluated, inputs = {}, {}
        for name, kind in (("file specialist", _files), ("pixel specialist", _pixels)):
            x, rows = kind(train_images, args.seed + 1, args.threads)  # other draws
            ex, erows = kind(images, args.seed, args.threads)  # the evaluated scans
            folder = Path(tmp) / name.split()[0]
            write_split(folder, "train", x, train.labels[rows])
            # a test split of its own, or the folder dataset would hold out 20% of the
            # training scans as one; the specialist is scored below, through predict
            write_split(folder, "t10k", ex, labels[erows])
            print(f"  {name}: {len(rows):,} training scans, {len(images) - len(erows)} of "
                  f"{len(images)} evaluated refused ({time.perf_counter() - t0:.0f} s); "
                  "training", flush=True)
            run = mnistlab.train("handwriting", dataset=str(folder), augment="affine",
                                 epochs=args.epochs, threads=args.threads, eval_test=False,
                                 progress=False, runs_dir=str(Path(tmp) / "runs"),
                                 name=name[:4], seed=args.seed, **extra,
                                 log=_epochs_only)
            inputs[name] = ex, erows
            evaluated[name] = percent(Predictor.load(run.path), ex, erows, labels)
            print(f"  {name}: {evaluated[name]:.2f}% ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
        report["specialists"] = evaluated

        print(f"\n  {'model':<34} {'scans':>7} {'tensors':>8} {'gap':>6}")
        rows = []
        for r, p in zip(args.runs, predictors):
            scans = percent(p, *inputs["file specialist"], labels)  # the files, preprocessed
            tensors = percent(p, images, np.arange(len(labels)), labels)
            rows.append((str(r), scans, tensors))
            report["models"][str(r)] = {"scans": scans, "tensors": tensors}
        ref = rows[0][2] if rows else None  # the first run's tensors: the goal's yardstick
        for r, scans, tensors in rows:
            print(f"  {r[-34:]:<34} {scans:6.2f}% {tensors:7.2f}% {scans - tensors:+6.2f}")
        for name, acc in evaluated.items():
            gap = f"{acc - ref:+6.2f}" if ref is not None else "     -"
            print(f"  {name:<34} {acc:6.2f}% {'':>8} {gap}")
        if ref is not None:
            print(f"  (specialists' gaps are to {rows[0][0]}'s tensors)")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
