"""Transfer learning: fine-tuning modes against training from scratch, in one table.

    python benchmarks/transfer.py              # the measured table (see docs/fine-tuning.md)
    python benchmarks/transfer.py --fast       # smoke: a quarter of the epochs, 1 seed (~5 min)

For each pair SOURCE -> TARGET a CNN is pretrained once on SOURCE, then trained on TARGET
with every label, with 100 and with 10 labels per class, in the modes head (linear probe),
partial (the dense layers), full, lora, and from scratch; every mode gets the same budget
(epochs, batch size, schedule) and the same augmentation. A vit-tiny pretrained on the first
pair's source shows LoRA where it is normally used, on the attention and MLP projections.

Every recipe choice (budgets, learning rates, LoRA rank) was made on the validation split;
the test split is evaluated once per run, for this table. Few-label rows are the mean of 3
seeds (the seed draws the labelled images, the initialization and the augmentation) and
hold out VAL_FEW validation images, not 5,000: with 10 labels per class, a large labelled
validation set would be unrealistic, and evaluating it every epoch would dominate the time.
Time is training time (evaluation excluded), summed over the run's epochs.

The last line of output is one JSON object: {"rows": [...], headline figures...}.

Measured (one run, `--threads 1`, shared 2-core CPU, 20 min; table in docs/fine-tuning.md):
mnist:0-4 -> mnist:5-9 with lenet5: partial 99.42%, full 99.55%, head 93.15% (scratch
99.53%); 10 labels per class: best fine-tuning minus scratch +2.29 points (fashion-mnist ->
mnist -1.71, mnist -> fashion-mnist +0.09); vit-tiny LoRA 98.77% vs full 99.07% with 8.35%
of the parameters trainable.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mnistlab.report
from mnistlab.checkpoint import load_checkpoint
from mnistlab.config import TrainConfig
from mnistlab.evaluate import evaluate
from mnistlab.finetune import FinetuneConfig, finetune
from mnistlab.models import count_parameters
from mnistlab.training import train

PAIRS = [("mnist:0-4", "mnist:5-9"), ("fashion-mnist", "mnist"), ("mnist", "fashion-mnist")]
CNN = "lenet5"  # blocks: conv, conv, dense, dense
PARTIAL = "partial:2"  # the two dense blocks train, the convolutions stay frozen
VIT = "vit-tiny"
VIT_LORA = dict(lora_rank=4, lora_alpha=8.0, lora_targets=("qkv", "proj", "fc1", "fc2"))
CNN_LORA = dict(lora_rank=4, lora_alpha=8.0)  # every conv and dense layer
MODES = ["head", "partial", "full", "lora", "scratch"]
SEEDS = [0, 1, 2]
VAL_FEW = 1000  # validation images held out of the parent dataset in few-label runs
AUGMENT = "affine"

# Adam + one-cycle; learning rates per mode chosen on the validation split of
# mnist:0-4 -> mnist:5-9 (head 1e-2, 3e-2, 1e-1; the others 1e-3 .. 3e-2)
LR = {"head": 1e-1, "partial": 1e-2, "full": 1e-2, "lora": 1e-2, "scratch": 1e-2}
LR_FEW = {**LR, "full": 3e-3}  # with 10 or 100 labels per class
VIT_LR = {"source": 3e-3, "full": 3e-3, "lora": 1e-2}  # lora 5e-3 (alpha 16) and 2e-2 lost


@dataclass(frozen=True)
class Budget:
    epochs: int
    batch_size: int


# Every label: about 1,100 steps of pretraining and 850 of target training, whatever the
# dataset's size; few labels: a fixed number of epochs over the labelled images.
SOURCE = {"mnist:0-4": Budget(5, 128), "mnist": Budget(3, 128), "fashion-mnist": Budget(3, 128)}
TARGET = {"mnist:5-9": Budget(4, 128), "mnist": Budget(2, 128), "fashion-mnist": Budget(2, 128)}
FEW = {100: Budget(15, 32), 10: Budget(60, 16)}
VIT_SOURCE, VIT_TARGET = Budget(10, 128), Budget(8, 128)


def fast(b: Budget) -> Budget:
    """--fast: a quarter of the epochs (at least one)."""
    return Budget(max(1, b.epochs // 4), b.batch_size)


def config(runs: Path, name: str, dataset: str, model: str, budget: Budget, lr: float, *,
           labels: int = 0, seed: int = 0, threads: int = 2) -> TrainConfig:
    return TrainConfig(
        name=name, runs_dir=str(runs), dataset=dataset, model=model, seed=seed,
        labels_per_class=labels, val_size=VAL_FEW if labels else -1, augment=AUGMENT,
        epochs=budget.epochs, batch_size=budget.batch_size, optimizer="adam", lr=lr,
        schedule="onecycle", threads=threads, progress=False, eval_test=False,
        log_every=10_000)


def measure(run_dir: Path) -> dict:
    """Test accuracy of the best (validation) checkpoint, parameter counts, training time."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ck = load_checkpoint(run_dir)
    meta = ck.meta.get("finetune", {})
    total = meta.get("total_params") or count_parameters(ck.model)
    return {
        "test_acc": 100 * evaluate(ck, "test").metrics["accuracy"],
        "val_acc": 100 * ck.meta["metrics"]["val_acc"],
        "trainable_params": meta.get("trainable_params", total),
        "total_params": total,
        "seconds": sum(r["seconds"] for r in records if r["type"] == "epoch"),
    }


def summarize(key: dict, runs: list[dict]) -> dict:
    accs = [r["test_acc"] for r in runs]
    return {
        **key,
        "test_acc": round(statistics.fmean(accs), 2),
        "test_acc_std": round(statistics.stdev(accs), 2) if len(accs) > 1 else 0.0,
        "val_acc": round(statistics.fmean(r["val_acc"] for r in runs), 2),
        "seeds": len(runs),
        "trainable_params": runs[0]["trainable_params"],
        "total_params": runs[0]["total_params"],
        "seconds": round(statistics.fmean(r["seconds"] for r in runs), 1),
    }


def run_mode(runs: Path, source_run: Path, model: str, source: str, target: str, mode: str,
             labels: int, budget: Budget, lr: float, seeds: list[int], threads: int,
             lora: dict) -> dict:
    results = []
    for seed in seeds:
        tag = f"{model}-{source}-{target}-{labels}-{mode}-{seed}".replace(":", "_")
        cfg = config(runs, tag, target, model, budget, lr, labels=labels, seed=seed,
                     threads=threads)
        if mode == "scratch":
            run = train(cfg, log=quiet)
        else:
            ft = FinetuneConfig(str(source_run), mode=PARTIAL if mode == "partial" else mode,
                                **(lora if mode == "lora" else {}))
            run = finetune(ft, cfg, log=quiet)
        results.append(measure(run))
    key = {"source": source, "target": target, "model": model, "labels_per_class": labels,
           "mode": mode}
    return summarize(key, results)


def quiet(*_a, **_k) -> None:
    pass


def fmt_row(r: dict) -> str:
    labels = "all" if r["labels_per_class"] == 0 else str(r["labels_per_class"])
    acc = f"{r['test_acc']:6.2f}" + (f" ±{r['test_acc_std']:.2f}" if r["seeds"] > 1 else "      ")
    return (f"{r['source'] + ' -> ' + r['target']:<28} {r['model']:<9} {labels:>5} "
            f"{r['mode']:<8} {acc:>13} {r['trainable_params']:>9,} / {r['total_params']:<9,} "
            f"{r['seconds']:7.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="smoke run: tiny budgets, one seed")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--runs-dir", help="keep the runs here (default: a temporary directory)")
    args = ap.parse_args(argv)
    shrink = fast if args.fast else (lambda b: b)
    seeds = SEEDS[:1] if args.fast else SEEDS
    # the run reports (plots) are not needed here and take seconds per run; the test split
    # is evaluated by measure() instead
    mnistlab.report.write_report = lambda *a, **k: None
    tmp = None if args.runs_dir else tempfile.TemporaryDirectory(prefix="transfer-")
    runs = Path(args.runs_dir or tmp.name)
    t_start = time.perf_counter()
    header = (f"{'pair':<28} {'model':<9} {'labels':>5} {'mode':<8} {'test acc %':>13} "
              f"{'trainable / total':>21} {'time s':>7}")
    print(header)
    rows = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(fmt_row(row), flush=True)

    # --- CNN: every pair, every label budget, every mode
    for source, target in PAIRS:
        cfg = config(runs, f"src-{CNN}-{source}".replace(":", "_"), source, CNN,
                     shrink(SOURCE[source]), LR["scratch"], threads=args.threads)
        source_run = train(cfg, log=quiet)
        for labels in (0, 100, 10):
            budget = shrink(FEW[labels] if labels else TARGET[target])
            for mode in MODES:
                lr = (LR_FEW if labels else LR)[mode]
                emit(run_mode(runs, source_run, CNN, source, target, mode, labels, budget, lr,
                              seeds if labels else [0], args.threads, CNN_LORA))

    # --- ViT: LoRA on attention and MLP projections against full fine-tuning
    source, target = PAIRS[0]
    cfg = config(runs, f"src-{VIT}-{source}".replace(":", "_"), source, VIT,
                 shrink(VIT_SOURCE), VIT_LR["source"], threads=args.threads)
    source_run = train(cfg, log=quiet)
    for mode in ("full", "lora"):
        emit(run_mode(runs, source_run, VIT, source, target, mode, 0, shrink(VIT_TARGET),
                      VIT_LR[mode], [0], args.threads, VIT_LORA))

    # --- headline figures
    def pick(model: str, target: str, labels: int, mode: str) -> dict:
        return next(r for r in rows if (r["model"], r["target"], r["labels_per_class"],
                                        r["mode"]) == (model, target, labels, mode))

    def few10(source: str, target: str) -> float:
        """Test accuracy of the fine-tuning mode best on validation, minus scratch's."""
        tuned = [r for r in rows if r["model"] == CNN and r["source"] == source
                 and r["target"] == target and r["labels_per_class"] == 10
                 and r["mode"] != "scratch"]
        best = max(tuned, key=lambda r: r["val_acc"])
        return round(best["test_acc"] - pick(CNN, target, 10, "scratch")["test_acc"], 2)

    s0, t0 = PAIRS[0]
    lora_vit, full_vit = pick(VIT, t0, 0, "lora"), pick(VIT, t0, 0, "full")
    summary = {
        "rows": rows,
        "head_0_4_to_5_9": pick(CNN, t0, 0, "head")["test_acc"],
        "full_0_4_to_5_9": pick(CNN, t0, 0, "full")["test_acc"],
        "partial_0_4_to_5_9": pick(CNN, t0, 0, "partial")["test_acc"],
        "few10_best_minus_scratch": few10(s0, t0),
        "few10_best_minus_scratch_by_pair": {f"{s} -> {t}": few10(s, t) for s, t in PAIRS},
        "lora_vit_accuracy": lora_vit["test_acc"],
        "full_vit_accuracy": full_vit["test_acc"],
        # trainable / all parameters of the adapted model (adapters included, as PEFT counts)
        "lora_trainable_fraction": round(lora_vit["trainable_params"]
                                         / lora_vit["total_params"], 4),
        "lora_trainable_over_base_params": round(lora_vit["trainable_params"]
                                                 / full_vit["total_params"], 4),
        "cnn": CNN, "partial_mode": PARTIAL, "vit_lora": {**VIT_LORA, "lora_targets":
                                                         list(VIT_LORA["lora_targets"])},
        "fast": args.fast,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    if tmp is not None:
        tmp.cleanup()
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
