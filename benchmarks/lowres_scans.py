"""Low-resolution scans: where the accuracy goes, by the scan's resolution.

    python benchmarks/lowres_scans.py RUN [RUN ...] [--n 1000] [--split val] [--sizes 7,8,10,12]

The `lowres-scan` style of mnistlab/handwriting.py scans each digit at 7-12 px (the digit
filling its frame) and upscales it 4-20x. Here the scan's size is fixed, one size at a time,
every other draw (pen, margin, factor, filter, polarity) as in that style, and each model
gets, per size:

- ``scan``: the rendered files through exactly the path of `mnistlab predict`;
- ``with paper``: the same scans with ``--margin`` MNIST pixels of paper around the digit
  (the digit keeping its resolution): what the frame-filling crop costs;
- ``round trip``: the same digits as tensors, area-averaged inside their 28-px frame down to
  the size that makes the digit (20 px in MNIST's frame) that many pixels, and interpolated
  back (the low-resolution round trip of the `handwriting` augmentation), its brightest
  quarter stretched to full ink as preprocessing does, no other preprocessing: what is left
  of the digit at that resolution, in the form the model was trained on;
- ``tensors``: the same digits as MNIST arrays.

A scan well below its round trip loses accuracy to the pipeline (upscaling, preprocessing);
a round trip well below the tensors loses it to the resolution itself. The last line is one
JSON object with every figure.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from real_handwriting import labels_of, preprocess_all  # noqa: E402  (this folder)

from mnistlab import data  # noqa: E402
from mnistlab.handwriting import STYLES, lowres_scan  # noqa: E402
from mnistlab.predict import Predictor  # noqa: E402


def accuracy(p: Predictor, images01: np.ndarray, labels: np.ndarray,
             accepted: np.ndarray | None = None) -> float:
    """Percent right through the predict path; with ``accepted`` (N,), images01 holds only
    the accepted ones and a refused image counts as an error."""
    if not len(images01):
        return 0.0
    right = labels_of(p, images01)[0] == (labels if accepted is None else labels[accepted])
    return 100 * float(right.sum()) / len(labels)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories or checkpoints")
    ap.add_argument("--n", type=int, default=1000, help="digits (default 1000)")
    ap.add_argument("--seed", type=int, default=0, help="picks the digits and renders them")
    ap.add_argument("--split", choices=["val", "test"], default="val")
    ap.add_argument("--sizes", default="7,8,9,10,12,14,20", help="scan sizes, pixels")
    ap.add_argument("--margin", type=int, default=6,
                    help="MNIST pixels of paper around the digit for the 'with paper' column")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        ap.error(f"--sizes: comma-separated whole numbers of pixels, got {args.sizes!r}")
    if min(sizes) < 1 or args.margin < 0 or args.n < 1:
        ap.error("--sizes must be >= 1 px, --margin >= 0 and --n >= 1")
    import torch

    from mnistlab.augment import restyle, stretch_ink
    from mnistlab.preprocess import FULL_INK_SHARE

    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.split} split, {args.n} digits, "
          f"seed {args.seed}", flush=True)
    digits = data.load("mnist", args.split)
    pick = np.sort(np.random.default_rng(args.seed).choice(len(digits), min(args.n, len(digits)),
                                                           replace=False))
    images, labels = digits.images[pick], digits.labels[pick]
    tensors = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    predictors = [Predictor.load(r) for r in args.runs]
    code = list(STYLES).index("lowres-scan")  # the style's own generator streams

    report: dict = {"split": args.split, "n": len(pick), "seed": args.seed, "models": {}}
    rows = {r: [] for r in args.runs}
    for size in sizes:
        prepared = []  # (inputs, accepted) as the style makes them, then with paper around
        for margin in (0, args.margin):
            scan = functools.partial(lowres_scan, size=size, margin=margin)
            files = [scan(d, np.random.default_rng([args.seed, code, i]))
                     for i, d in enumerate(images)]
            prepared.append(preprocess_all(predictors[0], files))  # the same for every model
        (inputs, ok), (padded, padded_ok) = prepared
        frame = min(28, round(size * 28 / 20))
        trip = restyle(tensors, None, torch.full((len(pick),), frame))
        trip = stretch_ink(trip, FULL_INK_SHARE)[:, 0].numpy()  # as preprocessing stretches ink
        for run, p in zip(args.runs, predictors):
            rows[run].append({"size": size, "scan": accuracy(p, inputs, labels, ok),
                              "refused": int((~ok).sum()),
                              "with_paper": accuracy(p, padded, labels, padded_ok),
                              "round_trip": accuracy(p, trip, labels)})
        print(f"  {size} px done", flush=True)
    for run, p in zip(args.runs, predictors):
        t = accuracy(p, images.astype(np.float32) / 255.0, labels)
        print(f"\n{run}: tensors {t:.2f}%\n"
              "| scan size | scan | refused | with paper | round trip | tensors |\n"
              "|---|---|---|---|---|---|")
        for row in rows[run]:
            print(f"| {row['size']} px | {row['scan']:.2f}% | {row['refused']} | "
                  f"{row['with_paper']:.2f}% | {row['round_trip']:.2f}% | {t:.2f}% |")
        report["models"][run] = {"tensors": t, "sizes": rows[run]}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
