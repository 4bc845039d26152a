"""Question 5: model optimization. Learning-rate decay, the optimizer, the architecture
(including a residual CNN); pruning and quantization are in docs/compression.md.

    python examples/lessons/q5_optimization.py       # full MNIST: tables + docs/img/q5_*.png

1. Learning-rate decay (学习率衰减): LeNet-5, 2 epochs of Adam at a peak of 3e-3, under
   each schedule of `mnistlab train --schedule`.
2. Optimizers: the same LeNet-5 and budget, constant rate, SGD with momentum 0.9, RMSprop
   (plain, ``--momentum 0``) and Adam, each at three or four learning rates (a fourth where
   the best of three was at the edge); the best on validation is each optimizer's entry.
3. Architecture: four models, one budget (2 epochs, batch 128, Adam one-cycle to 2e-3):
   an MLP, LeNet-5, fast-cnn and the residual ``resnet-small``. (``seed-cnn``, the text's
   CNN, costs 5x resnet-small's compute per image; its own recipe and the corrected
   program of coding problem 2 give its figures.)

Choices are made on validation; each run's test accuracy is evaluated once, at its end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command, default_runs_dir, pct, pyplot, run, save_figure, table  # noqa: E402

LENET = {"model": "lenet5", "epochs": 2, "batch_size": 128}

# ---------------------------------------------------------------------- 1. schedules

SCHEDULES = {
    "constant": {"schedule": "constant"},
    "step (x0.5 per epoch)": {"schedule": "step", "gamma": 0.5},
    "exponential (x0.5 per epoch, smooth)": {"schedule": "exponential", "gamma": 0.5},
    "cosine": {"schedule": "cosine"},
    "one-cycle": {"schedule": "onecycle"},
}

# ---------------------------------------------------------------------- 2. optimizers

OPTIMIZERS = {
    "SGD, momentum 0.9": [{"optimizer": "sgd", "momentum": 0.9, "lr": v} for v in (0.01, 0.03, 0.1)],
    "RMSprop": [{"optimizer": "rmsprop", "momentum": 0.0, "lr": v} for v in (3e-4, 1e-3, 3e-3)],
    "Adam": [{"optimizer": "adam", "lr": v} for v in (3e-4, 1e-3, 3e-3, 1e-2)],
}

# ---------------------------------------------------------------------- 3. architectures

ARCH_TRAIN = {"epochs": 2, "batch_size": 128, "optimizer": "adam", "lr": 2e-3,
              "schedule": "onecycle"}
ARCHITECTURES = {
    "mlp 784-512-256-10": {"model": "mlp"},
    "lenet5": {"model": "lenet5"},
    "fast-cnn 32-32": {"model": "fast-cnn"},
    "resnet-small": {"model": "resnet-small"},
}


def _row(label: str, over: dict, r: dict) -> dict:
    return {"label": label, "command": command(over), "val": r["val"]["accuracy"],
            "test": r["test"]["accuracy"] if r["test"] else None, "steps": r["steps"],
            "epochs": r["epochs"]}


def schedules(dataset: str, runs_dir: Path, base: dict = LENET,
              variants: dict = SCHEDULES, lr: float = 3e-3) -> list[dict]:
    rows = []
    for i, (label, s) in enumerate(variants.items()):
        over = {"dataset": dataset, **base, "optimizer": "adam", "lr": lr, **s}
        rows.append(_row(label, over, run(over, runs_dir, f"schedule-{i}")))
    return rows


def optimizers(dataset: str, runs_dir: Path, base: dict = LENET,
               variants: dict = OPTIMIZERS) -> list[dict]:
    rows = []
    for i, (label, settings) in enumerate(variants.items()):
        tried = []
        for j, s in enumerate(settings):
            over = {"dataset": dataset, **base, "schedule": "constant", **s}
            tried.append({**_row(label, over, run(over, runs_dir, f"optim-{i}-{j}")),
                          "lr": s["lr"]})
        best = max(tried, key=lambda t: t["val"])  # chosen on validation
        best["tried"] = [(t["lr"], t["val"]) for t in tried]
        rows.append(best)
    return rows


def architectures(dataset: str, runs_dir: Path, models: dict = ARCHITECTURES,
                  train: dict = ARCH_TRAIN) -> list[dict]:
    from mnistlab.models import create_model
    from mnistlab.summary import summarize

    rows = []
    for i, (label, m) in enumerate(models.items()):
        over = {"dataset": dataset, **m, **train}
        s = summarize(create_model(m["model"], **m.get("model_args", {})))
        rows.append({**_row(label, over, run(over, runs_dir, f"arch-{i}")),
                     "params": s["params"], "flops": s["flops"]})
    return rows


def interval_losses(steps: list[dict], epochs: list[dict]) -> tuple[list[int], list[float]]:
    """The mean training loss over each logging interval. A step record's loss is the
    running mean since its epoch began; k steps into the epoch, L_k * k - L_j * j is the sum
    over steps j+1..k (the last, smaller batch of an epoch counts as a whole one)."""
    per_epoch = epochs[0]["step"]  # steps in one epoch
    xs, ys, prev = [], [], {}
    for r in steps:
        k = r["step"] - (r["epoch"] - 1) * per_epoch
        j, lj = prev.get(r["epoch"], (0, 0.0))
        if k > j:
            xs.append(r["step"])
            ys.append((r["loss"] * k - lj * j) / (k - j))
        prev[r["epoch"]] = (k, r["loss"])
    return xs, ys


def plot(sched: list[dict], opt: list[dict]) -> Path:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, rows, title in ((a, sched, "learning-rate schedules (Adam, peak 3e-3)"),
                            (b, opt, "optimizers (each at its best lr on validation)")):
        for r in rows:
            label = r["label"] + (f", lr {r['lr']:g}" if "lr" in r else "")
            ax.plot(*interval_losses(r["steps"], r["epochs"]), lw=1.2, label=label)
        ax.set(xlabel="step", ylabel="training loss (mean per 50 steps)", yscale="log",
               title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, "q5_optimization.png")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", type=Path, default=default_runs_dir("q5"))
    a = ap.parse_args(argv)
    s = schedules("mnist", a.runs_dir)
    print(table(["schedule", "val %", "test %"], [[r["label"], pct(r["val"]), pct(r["test"])]
                                                  for r in s]))
    o = optimizers("mnist", a.runs_dir)
    print("\n" + table(["optimizer", "val % at lr ...", "chosen lr", "val %", "test %"],
                       [[r["label"], ", ".join(f"{lr:g}: {pct(v)}" for lr, v in r["tried"]),
                         f"{r['lr']:g}", pct(r["val"]), pct(r["test"])] for r in o]))
    arch = architectures("mnist", a.runs_dir)
    print("\n" + table(["model", "parameters", "MFLOPs / image", "val %", "test %"],
                       [[r["label"], f"{r['params']:,}", f"{r['flops'] / 1e6:.2f}",
                         pct(r["val"]), pct(r["test"])] for r in arch]))
    print("\ncommands:\n" + "\n".join(r["command"] for r in s + o + arch))
    print(f"\nplot: {plot(s, o)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
