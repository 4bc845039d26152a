"""Question 1: what makes a model large? Parameters, compute, memory, and the data it needs.

    python examples/lessons/q1_model_size.py            # full MNIST: tables + docs/img/q1_*.png
    python examples/lessons/q1_model_size.py --table    # only the size table (no training)

Three measurements:

1. ``mnistlab summary`` figures for every registered model: parameters, forward FLOPs per
   image, weight memory (float32) and what Adam training holds (weights, gradients and two
   moment buffers: 4x), and the activations one image leaves for the backward pass.
2. Accuracy against parameters: two families (MLPs of growing width, fast-cnn of growing
   width), one budget (2 epochs, Adam one-cycle).
3. Accuracy against the training-set size (``--labels-per-class``): a small MLP, a large MLP
   and a CNN on 10 ... 5,500 labelled images per class, each with ~1,700 steps (at most
   150 epochs).

Every run picks its best epoch on the validation split; the test split is evaluated once
per run, at the end.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command, default_runs_dir, pct, pyplot, run, save_figure, table  # noqa: E402

# ------------------------------------------------------------------------------ 1. size


def size_table() -> list[dict]:
    """One row per registered model, from mnistlab.summary (no training)."""
    from mnistlab.models import create_model, list_models
    from mnistlab.summary import summarize

    rows = []
    for name in list_models():
        s = summarize(create_model(name))
        acts = sum(math.prod(r["output"][1:]) for r in s["rows"] if r["output"])  # floats/image
        rows.append({"model": name, "params": s["params"], "flops": s["flops"],
                     "weights_mb": 4 * s["params"] / 1e6, "adam_mb": 16 * s["params"] / 1e6,
                     "acts_kb": 4 * acts / 1e3})
    return sorted(rows, key=lambda r: r["params"])


def format_size_table(rows: list[dict]) -> str:
    return table(["model", "parameters", "MFLOPs / image", "weights MB (float32)",
                  "Adam training state MB", "activations KB / image"],
                 [[r["model"], f"{r['params']:,}", f"{r['flops'] / 1e6:.2f}",
                   f"{r['weights_mb']:.2f}", f"{r['adam_mb']:.1f}", f"{r['acts_kb']:.0f}"]
                  for r in rows])


# ------------------------------------------------------------------- 2. accuracy vs params

TRAIN = {"epochs": 2, "batch_size": 128, "optimizer": "adam", "lr": 3e-3, "schedule": "onecycle"}
FAMILIES = {
    "mlp": [{"model": "mlp", "model_args": {"hidden": [h]}} for h in (16, 64, 256, 1024)],
    "fast-cnn": [{"model": "fast-cnn", "model_args": {"widths": list(w)}}
                 for w in ((4, 8), (8, 16), (16, 32), (32, 64))],
}


def width_sweep(dataset: str, runs_dir: Path, train: dict = TRAIN,
                families: dict = FAMILIES) -> list[dict]:
    from mnistlab.models import count_parameters, create_model

    rows = []
    for family, configs in families.items():
        for m in configs:
            over = {"dataset": dataset, **m, **train}
            tag = "-".join(str(v) for v in next(iter(m["model_args"].values())))
            r = run(over, runs_dir, f"params-{family}-{tag}")
            rows.append({"family": family, "args": m["model_args"], "command": command(over),
                         "params": count_parameters(create_model(m["model"], **m["model_args"])),
                         "val": r["val"]["accuracy"],
                         "test": r["test"]["accuracy"] if r["test"] else None})
    return rows


# ---------------------------------------------------------------- 3. accuracy vs data size

SIZE_MODELS = {
    "mlp 784-16-10": {"model": "mlp", "model_args": {"hidden": [16]}},
    "mlp 784-1024-10": {"model": "mlp", "model_args": {"hidden": [1024]}},
    "fast-cnn 16-32": {"model": "fast-cnn", "model_args": {"widths": [16, 32]}},
}
LABELS_PER_CLASS = (10, 30, 100, 300, 1000, 0)  # 0: every training image (5,500 per class)


def budget(n_images: int, batch: int = 64, steps: int = 1700, max_epochs: int = 150) -> int:
    """Epochs giving about ``steps`` steps (at least 2, at most ``max_epochs``)."""
    return max(2, min(max_epochs, math.ceil(steps / math.ceil(n_images / batch))))


def data_sweep(dataset: str, runs_dir: Path, sizes=LABELS_PER_CLASS, models=SIZE_MODELS,
               n_train: int = 55_000, steps: int = 1700) -> list[dict]:
    rows = []
    for label, m in models.items():
        for lpc in sizes:
            n = lpc * 10 if lpc else n_train
            over = {"dataset": dataset, **m, "labels_per_class": lpc, "batch_size": 64,
                    "epochs": budget(n, steps=steps), "optimizer": "adam", "lr": 3e-3,
                    "schedule": "onecycle"}
            r = run(over, runs_dir, f"data-{label.replace(' ', '_')}-{lpc}")
            rows.append({"model": label, "labels_per_class": lpc, "images": n,
                         "command": command(over), "val": r["val"]["accuracy"],
                         "test": r["test"]["accuracy"] if r["test"] else None})
    return rows


def plot(params_rows: list[dict], data_rows: list[dict]) -> Path:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for family in dict.fromkeys(r["family"] for r in params_rows):
        rs = [r for r in params_rows if r["family"] == family]
        a.plot([r["params"] for r in rs], [100 * r["test"] for r in rs], "o-", label=family)
    a.set(xscale="log", xlabel="parameters", ylabel="test accuracy %",
          title="same budget (2 epochs), growing width")
    for model in dict.fromkeys(r["model"] for r in data_rows):
        rs = [r for r in data_rows if r["model"] == model]
        b.plot([r["images"] for r in rs], [100 * r["test"] for r in rs], "o-", label=model)
    b.set(xscale="log", xlabel="labelled training images", ylabel="test accuracy %",
          title="growing training set")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, "q1_size.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", action="store_true", help="only the size table")
    ap.add_argument("--runs-dir", type=Path, default=default_runs_dir("q1"))
    a = ap.parse_args(argv)
    print(format_size_table(size_table()))
    if a.table:
        return 0
    p = width_sweep("mnist", a.runs_dir)
    print("\n" + table(["family", "arguments", "parameters", "val %", "test %"],
                       [[r["family"], r["args"], f"{r['params']:,}", pct(r["val"]), pct(r["test"])]
                        for r in p]))
    d = data_sweep("mnist", a.runs_dir)
    print("\n" + table(["model", "labels / class", "images", "val %", "test %"],
                       [[r["model"], r["labels_per_class"] or "all", f"{r['images']:,}",
                         pct(r["val"]), pct(r["test"])] for r in d]))
    print("\ncommands:\n" + "\n".join(r["command"] for r in p + d))
    print(f"\nplot: {plot(p, d)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
