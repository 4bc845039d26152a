"""Plots and the run report: learning curves, confusion matrix, worst mistakes, report.md."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write_json, load_checkpoint
from .evaluate import Evaluation, evaluate, format_metrics, probabilities


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(records: list[dict], path: Path) -> None:
    """Loss and accuracy per step (train) and per epoch (train and validation)."""
    plt = _pyplot()
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    if steps:
        ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, alpha=0.6,
                     label="train (running)")
        ax_acc.plot([r["step"] for r in steps], [r["acc"] for r in steps], lw=1, alpha=0.6,
                    label="train (running)")
    if epochs:
        e_steps = [r["step"] for r in epochs]
        ax_loss.plot(e_steps, [r["val_loss"] for r in epochs], "o-", label="validation")
        ax_acc.plot(e_steps, [r["val_acc"] for r in epochs], "o-", label="validation")
    ax_loss.set(xlabel="step", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str) -> None:
    plt = _pyplot()
    cm = np.asarray(confusion)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k))
    shown = np.log1p(cm)  # log scale so the off-diagonal errors stay visible
    ax.imshow(shown, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if shown[i, j] > shown.max() * 0.6 else "black")
    ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_mistakes(ev: Evaluation, path: Path, n: int = 32) -> int:
    """The ``n`` most confident mistakes, titled 'true->predicted (confidence)'."""
    from .plots import image_grid

    probs = probabilities(ev.logits, ev.metrics.get("temperature"))  # as the model reports them
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != ev.dataset.labels)
    if len(wrong) == 0:
        return 0
    worst = wrong[np.argsort(-probs[wrong, pred[wrong]])][:n]
    cls = ev.dataset.classes
    titles = [f"{cls[ev.dataset.labels[i]]}->{cls[pred[i]]} ({probs[i, pred[i]]:.2f})"
              for i in worst]
    image_grid(ev.dataset.images[worst], titles, path, title_colors=["red"] * len(worst))
    return len(worst)


def write_eval_artifacts(ev: Evaluation, run_dir: Path, split: str) -> None:
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / f"eval_{split}.json", ev.metrics)
    plot_confusion(ev.metrics["confusion"], list(ev.dataset.classes),
                   plots / f"confusion_{split}.png", f"confusion matrix ({split})")
    plot_mistakes(ev, plots / f"mistakes_{split}.png")


def write_report(run_dir: str | Path, *, eval_test: bool = True, log: Callable[[str], None] = print,
                 train_seconds: float | None = None) -> Path:
    """Evaluate the best checkpoint on validation (and test), write plots and report.md."""
    run_dir = Path(run_dir)
    ck = load_checkpoint(run_dir)
    records = read_metrics(run_dir)
    (run_dir / "plots").mkdir(exist_ok=True)
    if records:
        plot_curves(records, run_dir / "plots" / "curves.png")
    splits = ["val", "test"] if eval_test else ["val"]
    results = {}
    for split in splits:
        ev = evaluate(ck, split)
        write_eval_artifacts(ev, run_dir, split)
        results[split] = ev.metrics
        log(format_metrics(ev.metrics, f"== {split} ({ck.meta['dataset']}, best checkpoint) =="))
    meta = ck.meta
    epochs = [r for r in records if r["type"] == "epoch"]
    total_seconds = train_seconds if train_seconds is not None else sum(r["seconds"] for r in epochs)
    lines = [
        f"# Run report: {run_dir.name}",
        "",
        f"- model: `{meta['model']}` {json.dumps(meta['model_args'])}",
        f"- dataset: `{meta['dataset']}` (classes: {', '.join(meta['classes'])})",
        f"- best checkpoint: epoch {meta.get('epoch')} of {len(epochs)}, step {meta.get('step')}",
        f"- training time: {total_seconds:.1f} s (evaluation excluded)",
        f"- seed {meta.get('seed')}, code {meta.get('code_version')}, "
        f"versions {json.dumps(meta.get('versions', {}))}",
    ]
    if meta.get("parent"):
        lines.append(f"- fine-tuned from: `{meta['parent'].get('path')}` "
                     f"(mode {meta.get('finetune', {}).get('mode')})")
    cal = meta.get("calibration")
    lines += ["", "## Results", "", "| split | accuracy | loss | ECE | ECE before calibration "
              "| macro F1 |", "|---|---|---|---|---|---|"]
    for split, m in results.items():
        before = f"{100 * m['ece_before']:.2f}%" if "ece_before" in m else "-"
        lines.append(f"| {split} | {100 * m['accuracy']:.2f}% | {m['loss']:.4f} | "
                     f"{100 * m['ece']:.2f}% | {before} | {m['macro_f1']:.4f} |")
    lines.append("")
    if cal:
        lines.append(f"Probabilities are calibrated by temperature scaling (T = "
                     f"{cal['temperature']:.3f}, fitted on the {cal['n']:,} validation images); "
                     f"loss and ECE are those of the calibrated probabilities.")
    else:
        lines.append("Probabilities are not calibrated (`mnistlab calibrate RUN` fits them).")
    last = splits[-1]
    m = results[last]
    lines += ["", f"## Per class ({last})", "", "| class | precision | recall | F1 | support |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['class']} | {r['precision']:.4f} | {r['recall']:.4f} | {r['f1']:.4f} | "
              f"{r['support']} |" for r in m["per_class"]]
    if m["confused_pairs"]:
        lines += ["", "Most confused (true -> predicted): " + ", ".join(
            f"{p['true']} -> {p['predicted']} ({p['count']})" for p in m["confused_pairs"][:5])]
    lines += ["", "## Plots", ""]
    if records:
        lines.append("![learning curves](plots/curves.png)")
    lines += [f"![confusion matrix]({'plots/confusion_' + last + '.png'})",
              f"![worst mistakes]({'plots/mistakes_' + last + '.png'})", "",
              "Model selection and early stopping used the validation split only; the test "
              "split was evaluated once, here.", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    log(f"report: {path}")
    return path
