"""Question 3: preventing overfitting, measured where it shows: 1,000 labelled digits.

    python examples/lessons/q3_overfitting.py     # full MNIST, 100 labels per class

An MLP 784-512-256-10 (536k parameters) learns 1,000 images by heart. Each remedy the text
names gets the same budget (60 epochs of batch 64, Adam 1e-3) on the same 1,000 images:
nothing; data augmentation (random rotation, scaling and shifts: ``--augment affine``); L1
and L2 penalties; dropout; early stopping on the validation loss; and all of them together.
Strengths come from small grids, chosen on the validation split (5,000 images).

Every run but early stopping keeps its *last* weights (``--no-restore-best``): mnistlab
otherwise keeps the best validation epoch, which is already early stopping's model
selection. The table gives the accuracy on the 1,000 training images (evaluated without
augmentation or dropout), on validation, the gap between the two, and the test accuracy
(evaluated once per run). The plot overlays the validation curves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command, default_runs_dir, pct, pyplot, run, save_figure, table  # noqa: E402

MODEL = {"model": "mlp", "model_args": {"hidden": [512, 256], "dropout": 0.0}}
TRAIN = {"batch_size": 64, "optimizer": "adam", "lr": 1e-3, "restore_best": False}

# name -> candidate settings (each a dict of TrainConfig fields); the best on validation wins
REMEDIES: dict[str, list[dict]] = {
    "nothing": [{}],
    "augmentation": [{"augment": "affine"}],  # rotate, scale, shift (crop-like)
    "L1": [{"l1": v} for v in (1e-5, 1e-4)],
    "L2": [{"l2": v} for v in (1e-4, 1e-3)],
    "dropout": [{"model_args": {**MODEL["model_args"], "dropout": 0.5}}],
    "early stopping": [{"early_stop": "val_loss", "patience": 10, "restore_best": True},
                       {"early_stop": "val_acc", "patience": 10, "restore_best": True}],
}


def together(chosen: dict[str, dict]) -> dict:
    """Every remedy at the strength chosen alone (L1 and L2 both: an elastic net)."""
    out: dict = {}
    for name in ("augmentation", "L1", "L2", "dropout", "early stopping"):
        out.update(chosen[name])
    return out


def clean_train_accuracy(run_dir: Path, overrides: dict) -> float:
    """Accuracy of the final weights on the labelled training images themselves, without
    augmentation or dropout (the training loop's running accuracy has both)."""
    import numpy as np

    from mnistlab.checkpoint import load_checkpoint
    from mnistlab.config import build_config
    from mnistlab.training import load_splits

    ck = load_checkpoint(run_dir)
    train, _val = load_splits(build_config(None, overrides))
    logits = ck.logits(ck.normalize(train.images.astype(np.float32) / 255.0))
    return float((logits.argmax(1) == train.labels).mean())


def measure(dataset: str, runs_dir: Path, *, labels_per_class: int = 100, epochs: int = 60,
            remedies: dict[str, list[dict]] = REMEDIES, eval_test: bool = True) -> list[dict]:
    base = {"dataset": dataset, "labels_per_class": labels_per_class, "epochs": epochs,
            **MODEL, **TRAIN, "eval_test": eval_test}

    def one(name: str, tag: str, setting: dict) -> dict:
        over = {**base, **setting}
        r = run(over, runs_dir, f"{name.replace(' ', '_')}-{tag}")
        train_acc = clean_train_accuracy(r["run_dir"], over)
        return {"remedy": name, "setting": setting, "command": command(over),
                "train": train_acc, "val": r["val"]["accuracy"], "gap": train_acc - r["val"]["accuracy"],
                "test": r["test"]["accuracy"] if r["test"] else None,
                "epochs_run": len(r["epochs"]), "curve": r["epochs"]}

    rows, chosen = [], {}
    for name, settings in remedies.items():
        tried = [one(name, str(i), s) for i, s in enumerate(settings)]
        best = max(tried, key=lambda t: t["val"])  # chosen on validation
        best["tried"] = [(t["setting"], t["val"]) for t in tried]
        chosen[name] = best["setting"]
        rows.append(best)
    if set(chosen) >= {"augmentation", "L1", "L2", "dropout", "early stopping"}:
        rows.append(one("all together", "0", together(chosen)))
    return rows


def plot(rows: list[dict]) -> Path:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
    for r in rows:
        ep = [e["epoch"] for e in r["curve"]]
        style = "k-" if r["remedy"] == "nothing" else "-"
        a.plot(ep, [e["val_loss"] for e in r["curve"]], style, lw=1.3, label=r["remedy"],
               marker="x", markevery=[len(ep) - 1])  # x: the last epoch (early stopping)
        b.plot(ep, [100 * e["val_acc"] for e in r["curve"]], style, lw=1.3, label=r["remedy"],
               marker="x", markevery=[len(ep) - 1])
    a.set(xlabel="epoch", ylabel="validation cross-entropy", title="validation loss",
          yscale="log")
    b.set(xlabel="epoch", ylabel="validation accuracy %", title="validation accuracy")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    b.legend(fontsize=7, loc="lower right")
    return save_figure(fig, "q3_overfitting.png")


def describe(setting: dict) -> str:
    """A setting as its `mnistlab train` flags, without the fixed ones."""
    parts = []
    for k, v in setting.items():
        if k == "model_args":
            parts.append(f"dropout {v['dropout']}")
        elif k == "restore_best":
            continue
        else:
            parts.append(f"{k.replace('_', '-')} {v}")
    return ", ".join(parts) or "-"


def format_rows(rows: list[dict]) -> str:
    return table(["remedy", "setting (chosen on val)", "train %", "val %", "gap (points)",
                  "test %", "epochs run"],
                 [[r["remedy"], describe(r["setting"]), pct(r["train"]), pct(r["val"]),
                   f"{100 * r['gap']:.1f}", pct(r["test"]), r["epochs_run"]] for r in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", type=Path, default=default_runs_dir("q3"))
    a = ap.parse_args(argv)
    rows = measure("mnist", a.runs_dir)
    print(format_rows(rows))
    print("\nvalidation accuracy of every setting tried:")
    for r in rows:
        for setting, val in r.get("tried", []):
            print(f"  {r['remedy']}: {describe(setting)} -> {pct(val)}")
    print("\ncommands:\n" + "\n".join(r["command"] for r in rows))
    print(f"\nplot: {plot(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
