"""Real handwriting: MNIST digits rendered as the files people send, classified through
exactly the path of `mnistlab predict` (``Predictor.preprocess`` + ``predict_arrays``).

    python benchmarks/real_handwriting.py RUN [RUN ...] [--n 2000] [--split test]

A fixed, seeded set of ``--n`` digits of the MNIST split is rendered in every style of
``mnistlab/handwriting.py`` (10 styles: low-resolution scans upscaled 4-20x, photos with a
shadow, low-quality JPEG, sensor noise, thick and thin pens, small off-centre digits,
rotation up to 20 degrees, transparent canvases, and the plain PNG), at run time, never
stored. For every model, per style: accuracy (a refused image counts as an error), how
many images preprocessing refused, how many the model flagged "not a digit", and the same
digits' accuracy as tensors (the raw MNIST arrays). Then each model's accuracy on the
whole split (tensors) and how well its "not a digit" energy score separates MNIST from
Fashion-MNIST (AUROC, as tensors and as PNG files through the predict path; a refused
file counts as detected). ``--split val`` renders validation digits (the hold-out of
seed 0) against Fashion-MNIST training images: that is the one to make choices on.

The last line is one JSON object with every figure. Preprocessing does not depend on the
model, so each image is preprocessed once and classified by every model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mnistlab import data  # noqa: E402
from mnistlab.calibrate import auroc, energy  # noqa: E402
from mnistlab.handwriting import STYLES, render_set  # noqa: E402
from mnistlab.predict import Predictor  # noqa: E402
from mnistlab.preprocess import PreprocessError, to_png  # noqa: E402


def preprocess_all(predictor: Predictor, files: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (K, 28, 28) of the accepted files, accepted mask (N,))."""
    out, ok = [], np.zeros(len(files), bool)
    for i, f in enumerate(files):
        try:
            out.append(predictor.preprocess(f))
            ok[i] = True
        except PreprocessError:
            pass
    return (np.stack(out) if out else np.zeros((0, 28, 28), np.float32)), ok


def scores(p: Predictor, images01: np.ndarray) -> dict[str, np.ndarray]:
    """The "not a digit" scores (higher: less like a digit), with the calibrated T if any:
    the energy the Predictor uses, and the two it was chosen against (calibrate.py)."""
    logits = p.checkpoint.logits(p.checkpoint.normalize(images01))
    t = p.calibration["temperature"] if p.calibration else 1.0
    z = logits / t
    probs = np.exp(z - z.max(1, keepdims=True))
    return {"energy": energy(logits, t), "max_logit": -logits.max(1),
            "max_probability": -(probs / probs.sum(1, keepdims=True)).max(1)}


def labels_of(p: Predictor, images01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class indices, not-a-digit flags) through ``predict_arrays``."""
    preds = p.predict_arrays(images01)
    return (np.array([q.index for q in preds], int),
            np.array([bool(q.not_digit) for q in preds], bool))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories or checkpoints to compare")
    ap.add_argument("--n", type=int, default=2000, help="digits per style (default 2000)")
    ap.add_argument("--seed", type=int, default=0, help="picks the digits and renders them")
    ap.add_argument("--split", choices=["test", "val"], default="test")
    ap.add_argument("--styles", default=",".join(STYLES), help="comma-separated subset")
    ap.add_argument("--ood-files", type=int, default=2000,
                    help="images of each dataset sent as PNG files for the file AUROC")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    styles = args.styles.split(",")
    print(f"load average {os.getloadavg()[0]:.2f}; {args.split} split, {args.n} digits x "
          f"{len(styles)} styles, seed {args.seed}", flush=True)

    # ---- data: the digits, and Fashion-MNIST as the "not a digit" images
    digits = data.load("mnist", args.split)
    fashion = data.load("fashion-mnist", "test" if args.split == "test" else "train")
    rng = np.random.default_rng(args.seed)
    pick = np.sort(rng.choice(len(digits), min(args.n, len(digits)), replace=False))
    images, labels = digits.images[pick], digits.labels[pick]
    fashion_idx = rng.choice(len(fashion), min(len(fashion), len(digits)), replace=False)
    fashion_images = fashion.images[fashion_idx]

    predictors = [Predictor.load(r) for r in args.runs]
    first = predictors[0]

    # ---- render and preprocess every style once (the predict path's first half)
    inputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    t0 = time.perf_counter()
    for style in styles:
        files = [f for _, _, f in render_set(images, [style], seed=args.seed)]
        inputs[style] = preprocess_all(first, files)
        print(f"  {style:<16} rendered and preprocessed; refused {(~inputs[style][1]).sum()}",
              flush=True)
    k = min(args.ood_files, len(fashion_images), len(digits))
    as_files = [to_png(im / 255.0) for im in digits.images[:k]], \
        [to_png(im / 255.0) for im in fashion_images[:k]]
    ood_inputs = [preprocess_all(first, f) for f in as_files]
    print(f"  ({time.perf_counter() - t0:.0f} s)", flush=True)

    # ---- every model
    report: dict = {"split": args.split, "n": int(len(pick)), "seed": args.seed,
                    "styles": styles, "models": {}}
    for run, p in zip(args.runs, predictors):
        tensors01 = images.astype(np.float32) / 255.0
        tensor_pred, _ = labels_of(p, tensors01)
        tensor_acc = float((tensor_pred == labels).mean())
        all_pred, _ = labels_of(p, digits.images.astype(np.float32) / 255.0)
        split_acc = float((all_pred == digits.labels).mean())
        inside = scores(p, digits.images.astype(np.float32) / 255.0)
        outside = scores(p, fashion_images.astype(np.float32) / 255.0)
        auc_all = {k: auroc(inside[k], outside[k]) for k in inside}
        auc_tensors = auc_all["energy"]
        file_scores = []
        for x, ok in ood_inputs:  # refused files count as detected: +inf energy
            e = np.full(len(ok), np.inf)
            e[ok] = scores(p, x)["energy"]
            file_scores.append(e)
        auc_files = auroc(*file_scores)
        cal = p.calibration
        meta = p.meta
        t = f"T = {cal['temperature']:.3f}" if cal else "not calibrated"
        print(f"\n{run}: {meta['model']} {json.dumps(meta['model_args'])}, {t}")
        print(f"  MNIST {args.split} accuracy (all {len(digits):,}, tensors) {100 * split_acc:.2f}%;"
              f"  not-a-digit AUROC vs Fashion-MNIST: tensors {auc_tensors:.4f}, "
              f"files {auc_files:.4f}")
        print("  (other scores on the tensors: " + ", ".join(
            f"{k} {v:.4f}" for k, v in auc_all.items() if k != "energy") + ")")
        print(f"  {'style':<16} {'accuracy':>9} {'refused':>8} {'not-digit':>10} "
              f"{'tensors':>8} {'gap':>6}")
        rows = {}
        for style in styles:
            x, ok = inputs[style]
            pred = np.full(len(ok), -1)
            flagged = np.zeros(len(ok), bool)
            if ok.any():
                pred[ok], flagged[ok] = labels_of(p, x)
            acc = float((pred == labels).mean())
            rows[style] = {"accuracy": acc, "refused": int((~ok).sum()),
                           "not_digit": int(flagged.sum()), "tensor_accuracy": tensor_acc}
            print(f"  {style:<16} {100 * acc:8.2f}% {(~ok).sum():8d} {flagged.sum():10d} "
                  f"{100 * tensor_acc:7.2f}% {100 * (acc - tensor_acc):+6.2f}")
        worst = min(rows, key=lambda s: rows[s]["accuracy"])
        print(f"  worst style: {worst}, {100 * (rows[worst]['accuracy'] - tensor_acc):+.2f} "
              f"points from the tensors")
        report["models"][run] = {
            "model": meta["model"], "temperature": cal["temperature"] if cal else None,
            "split_accuracy": split_acc, "tensor_accuracy": tensor_acc,
            "auroc_tensors": auc_tensors, "auroc_files": auc_files, "auroc_scores": auc_all,
            "worst_style": worst, "worst_gap": rows[worst]["accuracy"] - tensor_acc,
            "styles": rows}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
