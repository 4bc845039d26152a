"""mnistlab's NumPy MLP against scikit-learn's MLPClassifier, with the same settings.

    MNISTLAB_DATA_DIR=/path/to/data python benchmarks/numpy_vs_sklearn.py [--repeats 3]

Both train a 784-256-10 ReLU network with Adam (lr 1e-3, betas 0.9/0.999, eps 1e-8),
batch 128, 10 epochs, shuffled each epoch, on the 60,000 official training images scaled to
0..1, and are tested on the 10,000 official test images. scikit-learn gets its inputs the
usual way, `images / 255.0` (float64; `--sklearn-float32` gives it float32 instead) and
keeps its defaults otherwise (Glorot-uniform init, L2 alpha 1e-4 averaged over the batch);
mnistlab works in float32 with He init and no L2, and gets the raw uint8 pixels, scaling
each batch to 0..1 (x / 255) as it gathers it, inside its timed region (adding sklearn's
tiny L2, 7.8e-7 in mnistlab's units, costs it ~13%: 1.30 s instead of 1.14 s for 2 epochs).
Both use the machine's cores: scikit-learn through its multithreaded BLAS, mnistlab (by
default, `--workers 2`) through two processes that each own half of the first layer's rows
(mnistlab/scratch/parallel.py), with one BLAS thread each. mnistlab in one process
(`workers=1`, its multithreaded BLAS) is timed as well and printed for comparison; the
JSON's numpy_* figures are the `--workers` run.
Times are training only (`fit`, including starting the worker process), evaluation
excluded. With --repeats N the runs alternate N times (so load from other processes hits
all alike) and medians are reported. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from mnistlab.scratch import build_mlp, fit, make_optimizer, predict_logits


def load_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels); images uint8 (N, 784)."""
    try:
        from mnistlab.data import load
    except ImportError:  # the data module is optional here: read the IDX files directly
        load = None
    if load is not None:
        train, test = load("mnist", "all", download=False), load("mnist", "test", download=False)
        pairs = [(train.images, train.labels), (test.images, test.labels)]
    else:
        root = os.environ.get("MNISTLAB_DATA_DIR")
        if not root:
            raise SystemExit("set MNISTLAB_DATA_DIR to the folder holding mnist/*.gz")
        pairs = [
            (_read_idx(Path(root, "mnist", f"{p}-images-idx3-ubyte.gz")),
             _read_idx(Path(root, "mnist", f"{p}-labels-idx1-ubyte.gz")))
            for p in ("train", "t10k")
        ]  # fmt: skip
    (xtr, ytr), (xte, yte) = [(im.reshape(len(im), -1), lb.astype(np.int64)) for im, lb in pairs]
    return xtr, ytr, xte, yte


def _read_idx(path: Path) -> np.ndarray:
    """IDX: 2 zero bytes, a type byte (0x08 = uint8), ndim, then big-endian uint32 dims."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def run_sklearn(xtr, ytr, xte, yte, *, epochs: int, seed: int, dtype) -> tuple[float, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    xtr, xte = xtr / dtype(255.0), xte / dtype(255.0)  # uint8 / float64 is float64

    clf = MLPClassifier(
        hidden_layer_sizes=(256,),
        activation="relu",
        solver="adam",
        learning_rate_init=1e-3,
        batch_size=128,
        max_iter=epochs,  # epochs, for the adam solver
        shuffle=True,
        early_stopping=False,
        tol=0.0,
        n_iter_no_change=epochs + 1,
        random_state=seed,
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter reached, on purpose
        clf.fit(xtr, ytr)
    seconds = time.perf_counter() - t0
    return seconds, 100.0 * float((clf.predict(xte) == yte).mean())


def run_numpy(xtr, ytr, xte, yte, *, epochs: int, seed: int, workers: int) -> tuple[float, float]:
    # the raw uint8 pixels: fit scales each batch to 0..1 (x / 255) as it gathers it, inside
    # the timed region; the test set is scaled up front
    xte = xte / np.float32(255)  # float32
    model = build_mlp([784, 256, 10], activation="relu", init="he", seed=seed)
    opt = make_optimizer("adam", model.params(), lr=1e-3)
    t0 = time.perf_counter()
    fit(model, opt, xtr, ytr, epochs=epochs, batch_size=128, seed=seed, progress=False,
        pixel_norm=(0.0, 1.0), workers=workers)  # fmt: skip
    seconds = time.perf_counter() - t0
    acc = 100.0 * float((predict_logits(model, xte).argmax(axis=1) == yte).mean())
    return seconds, acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs; medians reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sklearn-float32", action="store_true", help="float32 inputs for sklearn")
    ap.add_argument("--workers", type=int, default=2, choices=(1, 2),
                    help="mnistlab processes for the reported figure (default 2)")  # fmt: skip
    args = ap.parse_args()
    sk_dtype = np.float32 if args.sklearn_float32 else np.float64

    xtr, ytr, xte, yte = load_mnist()
    print(
        f"MNIST: train {xtr.shape}, test {xte.shape}; {args.epochs} epochs, batch 128, "
        f"Adam 1e-3; sklearn inputs {np.dtype(sk_dtype).name}, mnistlab float32"
    )
    runners = {
        "sklearn": lambda: run_sklearn(
            xtr, ytr, xte, yte, epochs=args.epochs, seed=args.seed, dtype=sk_dtype
        ),
        "numpy": lambda: run_numpy(
            xtr, ytr, xte, yte, epochs=args.epochs, seed=args.seed, workers=args.workers
        ),
    }
    if args.workers != 1:  # for comparison: mnistlab in one process
        runners["numpy-1p"] = lambda: run_numpy(
            xtr, ytr, xte, yte, epochs=args.epochs, seed=args.seed, workers=1
        )
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for r in range(args.repeats):
        for name, fn in runners.items():
            seconds, acc = fn()
            runs[name].append((seconds, acc))
            print(f"  run {r + 1}/{args.repeats} {name:9s} train {seconds:7.2f} s  "
                  f"test accuracy {acc:.2f}%", flush=True)  # fmt: skip

    med = {
        name: (statistics.median(s for s, _ in rs), statistics.median(a for _, a in rs))
        for name, rs in runs.items()
    }
    speedup = med["sklearn"][0] / med["numpy"][0]
    print(f"scikit-learn MLPClassifier: {med['sklearn'][0]:.2f} s, {med['sklearn'][1]:.2f}%")
    print(f"mnistlab NumPy MLP, {args.workers} process(es): "
          f"{med['numpy'][0]:.2f} s, {med['numpy'][1]:.2f}%")  # fmt: skip
    if "numpy-1p" in med:
        one = med["numpy-1p"][0]
        print(f"  (in one process: {one:.2f} s, {med['numpy-1p'][1]:.2f}%, "
              f"{med['sklearn'][0] / one:.2f}x scikit-learn)")  # fmt: skip
    print(f"speedup {speedup:.2f}x (medians over {args.repeats} run(s))")
    print(
        json.dumps(
            {
                "sklearn_seconds": round(med["sklearn"][0], 3),
                "sklearn_accuracy": round(med["sklearn"][1], 2),
                "numpy_seconds": round(med["numpy"][0], 3),
                "numpy_accuracy": round(med["numpy"][1], 2),
                "speedup": round(speedup, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
