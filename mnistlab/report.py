"""Plots and the run report: learning curves, confusion matrix, worst mistakes, reliability
diagram, report.md.

    plots/curves.png                    loss, accuracy and learning rate against the epoch
    plots/confusion_<split>.png         confusion matrix (log colour scale)
    plots/mistakes_<split>.png          the most confident mistakes
    plots/reliability_<split>.png       confidence against accuracy (calibration)
    eval_<split>.json                   every metric of that evaluation

Files of the ``last`` checkpoint carry a ``_last`` suffix, so evaluating it never
overwrites the best checkpoint's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import atomic_write_json, load_checkpoint
from .config import to_toml
from .errors import MnistlabError
from .evaluate import Evaluation, evaluate, format_metrics, probabilities, reliability_bins
from .run import read_records, read_run_info, saved_config


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: str | Path) -> list[dict]:
    return read_records(Path(run_dir) / "metrics.jsonl")


def epoch_axis(records: list[dict]) -> tuple[list[dict], list[float], list[dict]]:
    """(step records, their position in epochs, epoch records): a step record's position
    is its step over the steps per epoch, so steps and epochs share one axis."""
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    per_epoch = epochs[0]["step"] / epochs[0]["epoch"] if epochs and epochs[0]["step"] else 0
    xs = [r["step"] / per_epoch if per_epoch else r["epoch"] for r in steps]
    return steps, xs, epochs


def plot_curves(records: list[dict], path: Path) -> None:
    """Loss, accuracy (training running average and validation per epoch) and the learning
    rate, against the epoch. The training loss is the plain cross-entropy (without label
    smoothing's term), so it compares with the validation loss."""
    plt = _pyplot()
    steps, xs, epochs = epoch_axis(records)
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 3.8))
    if steps:
        ax_loss.plot(xs, [r["loss"] for r in steps], lw=1, alpha=0.6, label="train (running)")
        ax_acc.plot(xs, [r["acc"] for r in steps], lw=1, alpha=0.6, label="train (running)")
        ax_lr.plot(xs, [r["lr"] for r in steps], lw=1.5)
    if epochs:
        ex = [r["epoch"] for r in epochs]
        ax_loss.plot(ex, [r["train_loss"] for r in epochs], "s--", ms=4, label="train (epoch)")
        ax_loss.plot(ex, [r["val_loss"] for r in epochs], "o-", label="validation")
        ax_acc.plot(ex, [r["train_acc"] for r in epochs], "s--", ms=4, label="train (epoch)")
        ax_acc.plot(ex, [r["val_acc"] for r in epochs], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_compare(runs: Sequence[tuple[str, list[dict]]], path: Path) -> None:
    """Validation accuracy and loss per epoch of several runs, overlaid."""
    plt = _pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for name, records in runs:
        epochs = [r for r in records if r["type"] == "epoch"]
        ex = [r["epoch"] for r in epochs]
        line = ax_acc.plot(ex, [r["val_acc"] for r in epochs], "o-", ms=3, label=name)[0]
        ax_loss.plot(ex, [r["val_loss"] for r in epochs], "o-", ms=3, color=line.get_color(),
                     label=f"{name} (validation)")
        ax_loss.plot(ex, [r["train_loss"] for r in epochs], "--", color=line.get_color(),
                     alpha=0.6, label=f"{name} (train)")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss (dashed: train)",
                yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
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


def plot_reliability(probs: np.ndarray, labels: np.ndarray, path: Path, title: str) -> None:
    """Accuracy per confidence bin against the diagonal of perfect calibration; the bars'
    shading shows how many predictions fall in each bin."""
    plt = _pyplot()
    bins = reliability_bins(probs, labels)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    centers = [(b["lo"] + b["hi"]) / 2 for b in bins]
    width = bins[0]["hi"] - bins[0]["lo"]
    total = max(1, sum(b["count"] for b in bins))
    ax.bar(centers, [b["accuracy"] for b in bins], width=width * 0.95, edgecolor="black",
           color=[(0.2, 0.4, 0.8, 0.25 + 0.75 * b["count"] / total) for b in bins],
           label="accuracy in bin")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy",
           title=title)
    ax.legend(loc="upper left", fontsize=8)
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


def write_eval_artifacts(ev: Evaluation, run_dir: Path, split: str,
                         which: str = "best") -> list[Path]:
    """eval_<split>.json and the plots of one evaluation (``_last`` suffix for ``last``)."""
    tag = split if which == "best" else f"{split}_{which}"
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    out = [run_dir / f"eval_{tag}.json", plots / f"confusion_{tag}.png",
           plots / f"reliability_{tag}.png"]
    atomic_write_json(out[0], ev.metrics)
    plot_confusion(ev.metrics["confusion"], list(ev.dataset.classes), out[1],
                   f"confusion matrix ({split}, {which})")
    calibrated = " calibrated" if ev.metrics.get("temperature") else ""
    plot_reliability(probabilities(ev.logits, ev.metrics.get("temperature")), ev.dataset.labels,
                     out[2], f"reliability ({split}, {which}{calibrated})")
    if plot_mistakes(ev, plots / f"mistakes_{tag}.png"):
        out.append(plots / f"mistakes_{tag}.png")
    return out


def write_report(run_dir: str | Path, *, eval_test: bool = True, log: Callable[[str], None] = print,
                 train_seconds: float | None = None) -> Path:
    """Evaluate the best checkpoint on validation (and test), write plots and report.md."""
    run_dir = Path(run_dir)
    ck = load_checkpoint(run_dir)
    records = read_metrics(run_dir)
    info = read_run_info(run_dir)
    (run_dir / "plots").mkdir(exist_ok=True)
    if records:
        plot_curves(records, run_dir / "plots" / "curves.png")
    splits = ["val", "test"] if eval_test else ["val"]
    if ck.meta.get("split", {}).get("seed", 0) is None:  # an ensemble of mixed validation splits
        splits = ["test"]
    results = {}
    for split in splits:
        ev = evaluate(ck, split)
        write_eval_artifacts(ev, run_dir, split)
        results[split] = ev.metrics
        log(format_metrics(ev.metrics, f"== {split} ({ck.meta['dataset']}, best checkpoint) =="))
    meta = ck.meta
    epochs = [r for r in records if r["type"] == "epoch"]
    if train_seconds is None:
        train_seconds = info.get("train_seconds", sum(r["seconds"] for r in epochs))
    from .engines import get_engine

    n_params = get_engine(ck.engine).num_parameters(ck.model)
    hw = info.get("hardware", {})
    ensemble = ck.engine == "ensemble"
    model_line = (f"- model: an ensemble of {len(meta['model_args']['members'])} members (the "
                  f"mean of their calibrated probabilities), {n_params:,} parameters"
                  if ensemble else f"- model: `{meta['model']}` {json.dumps(meta['model_args'])}, "
                  f"{n_params:,} parameters ({meta.get('engine', 'torch')} engine)")
    lines = [
        f"# Run report: {run_dir.name}",
        "",
        f"- status: {info.get('status', 'unknown')}"
        + (f" (resumed {info['resumed']} time(s))" if info.get("resumed") else ""),
        f"- command: `{info['command']}`" if info.get("command") else "- command: (unknown)",
        model_line,
        f"- dataset: `{meta['dataset']}` (classes: {', '.join(meta['classes'])})",
    ]
    if ensemble:
        lines += _members(info)
    else:
        lines += [
            f"- best checkpoint: epoch {meta.get('epoch')} of {len(epochs)}, "
            f"step {meta.get('step')}",
            f"- training time: {train_seconds:.1f} s (all sessions, evaluation excluded)",
            f"- hardware: {_hardware(hw)}" if hw else "- hardware: (not recorded)",
            f"- seed {meta.get('seed')}, code {meta.get('code_version')}, "
            f"versions {json.dumps(meta.get('versions', {}))}",
        ]
    if meta.get("parent"):
        lines.append(f"- derived from: `{meta['parent'].get('path')}` "
                     f"({_derivation(meta)})")
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
        lines.append("![learning curves: loss, accuracy, learning rate](plots/curves.png)")
    lines += [f"![confusion matrix](plots/confusion_{last}.png)",
              f"![reliability diagram](plots/reliability_{last}.png)",
              f"![worst mistakes](plots/mistakes_{last}.png)", ""]
    config = _config_toml(run_dir)
    if config:
        lines += ["## Resolved config", "", "Reproduce with `mnistlab train --config "
                  f"{run_dir}` (or `--config {run_dir}/config.json`).", "", "```toml",
                  config.rstrip(), "```", ""]
    lines += ["Model selection and early stopping used the validation split only; the test "
              "split was evaluated once, here.", ""]
    # sections other steps wrote about this run (e.g. compression), kept across rewrites
    for extra in sorted((run_dir / "report.d").glob("*.md")):
        lines += [extra.read_text().rstrip(), ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    log(f"report: {path}")
    return path


def _members(info: dict[str, Any]) -> list[str]:
    """The members table of an ensemble's report (from its run.json)."""
    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    lines = ["", "## Members", "", "| run | model | seed | temperature | val accuracy | "
             "test accuracy |", "|---|---|---|---|---|---|"]
    for m in info.get("members", []):
        lines.append(f"| `{m['run']}` | {m['model']} | {m.get('seed')} | "
                     f"{m.get('temperature', 1.0):.3g} | {pct(m.get('val_acc'))} | "
                     f"{pct(m.get('test_acc'))} |")
    return lines


def _hardware(hw: dict[str, Any]) -> str:
    keys = ("cpu", "cores", "device", "threads", "workers", "platform")
    return ", ".join(f"{k} {hw[k]}" for k in keys if k in hw)


def _derivation(meta: dict[str, Any]) -> str:
    ft = meta.get("finetune") or {}
    if meta.get("compression"):
        return f"compressed: {meta['compression'].get('description')}"
    return f"fine-tuned, mode {ft['mode']}" if "mode" in ft else "derived"


def _config_toml(run_dir: Path) -> str:
    try:
        return to_toml(saved_config(run_dir))
    except (MnistlabError, OSError):  # an old or foreign config.json: the report still gets written
        return ""


__all__ = ["write_report", "write_eval_artifacts", "plot_curves", "plot_compare",
           "plot_reliability", "read_metrics"]
