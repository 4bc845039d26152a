"""Question 4: transfer learning (迁移学习): pretrain on one task, fine-tune (微调) on another.

    python examples/lessons/q4_transfer.py                 # mnist:0-4 -> mnist:5-9, 10 labels/class
    python benchmarks/transfer.py --threads 1              # the full table (docs/fine-tuning.md)

The text's three steps, as mnistlab commands: choose a pretrained model (预训练模型) trained
on a similar task (a LeNet-5 on the digits 0-4), load its weights into a model with a new
head for the target classes (the digits 5-9), and fine-tune. This script runs the case
where transfer pays, 10 labelled images per class, in three ways with the same budget:
fine-tune everything (``--mode full``), train only the new head on frozen features
(``--mode head``), and train from scratch; mean over seeds. The settings are those of
benchmarks/transfer.py, which also measures where transfer does not pay (every label, or
a source from another domain).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BASE, command, default_runs_dir, pct, table  # noqa: E402

SOURCE = {"model": "lenet5", "epochs": 5, "batch_size": 128, "optimizer": "adam", "lr": 1e-2,
          "schedule": "onecycle", "augment": "affine"}
# 10 labels per class: 60 epochs of batch 16; learning rates of benchmarks/transfer.py
FEW = {"epochs": 60, "batch_size": 16, "optimizer": "adam", "schedule": "onecycle",
       "augment": "affine", "log_every": 10_000}
LR = {"full": 3e-3, "head": 1e-1, "scratch": 1e-2}


def pretrain(source: str, runs_dir: Path, source_cfg: dict = SOURCE) -> Path:
    from mnistlab.config import build_config
    from mnistlab.training import train

    run_dir = runs_dir / "source"
    if (run_dir / "eval_val.json").is_file():
        return run_dir
    cfg = build_config(None, {**BASE, "dataset": source, **source_cfg, "eval_test": False,
                              "runs_dir": str(runs_dir), "name": "source"})
    return train(cfg, log=lambda *_: None)


def compare(source: str, target: str, runs_dir: Path, *, labels_per_class: int = 10,
            seeds=(0, 1, 2), val_size: int = 1000, source_cfg: dict = SOURCE,
            few: dict = FEW) -> dict:
    """Test accuracy (mean, std over seeds) of full fine-tuning, head-only and scratch."""
    from mnistlab.config import build_config
    from mnistlab.evaluate import evaluate
    from mnistlab.finetune import FinetuneConfig, finetune
    from mnistlab.training import train

    src = pretrain(source, runs_dir, source_cfg)
    out: dict = {"source_run": src, "commands": [command({"dataset": source, **source_cfg,
                                                          "name": "source"})]}
    for mode in ("full", "head", "scratch"):
        accs = []
        for seed in seeds:
            name = f"{mode}-{labels_per_class}-{seed}"
            over = {"dataset": target, "labels_per_class": labels_per_class, "val_size": val_size,
                    **few, "lr": LR[mode], "seed": seed}
            cfg = build_config(None, {**BASE, **over, "eval_test": False,
                                      "runs_dir": str(runs_dir), "name": name})
            if mode == "scratch":
                run_dir = train(cfg.replace(model=source_cfg["model"]), log=lambda *_: None)
            else:
                run_dir = finetune(FinetuneConfig(str(src), mode=mode), cfg, log=lambda *_: None)
            accs.append(evaluate(run_dir, "test").metrics["accuracy"])
        out[mode] = {"mean": statistics.fmean(accs),
                     "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "runs": accs}
        cmd = command({"dataset": target, "labels_per_class": labels_per_class,
                       "val_size": val_size, **few, "lr": LR[mode]})
        if mode == "scratch":
            cmd = cmd.replace("mnistlab train", f"mnistlab train --model {source_cfg['model']}")
        else:
            cmd = cmd.replace("mnistlab train", f"mnistlab finetune --from {src} --mode {mode}")
        out["commands"].append(cmd)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", type=Path, default=default_runs_dir("q4"))
    a = ap.parse_args(argv)
    r = compare("mnist:0-4", "mnist:5-9", a.runs_dir)
    print(table(["mode", "test % (mean ± std, 3 seeds)", "per seed"],
                [[m, f"{pct(r[m]['mean'])} ± {100 * r[m]['std']:.2f}",
                  ", ".join(pct(x) for x in r[m]["runs"])] for m in ("full", "head", "scratch")]))
    print("\ncommands:\n" + "\n".join(r["commands"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
