"""`mnistlab finetune`: start from a trained run, new head, choose what trains."""

from __future__ import annotations

import argparse

from .common import add_train_flags, command, overrides

MODES = "full | head | partial:K | lora"


def register(sub) -> None:
    p = command(sub, "finetune", "fine-tune a trained model on another dataset or class subset",
                description="Start from a trained run or checkpoint, rebuild the head for the "
                "target's classes and train as --mode says. See docs/fine-tuning.md.")
    p.add_argument("--from", dest="source", required=True, metavar="RUN_OR_CHECKPOINT",
                   help="the pretrained run directory or checkpoint")
    p.add_argument("--mode", default="full", help=MODES)
    p.add_argument("--backbone-lr-scale", type=float, default=1.0, metavar="S",
                   help="learning-rate multiplier of the pretrained weights (full, partial)")
    p.add_argument("--unfreeze-every", type=int, default=0, metavar="N",
                   help="gradual unfreezing: one more block every N epochs, head first")
    p.add_argument("--lora-rank", type=int, default=8, metavar="R",
                   help="lora: rank of each adapter")
    p.add_argument("--lora-alpha", type=float, default=16.0, metavar="A",
                   help="lora: the adapter update is scaled by A / R")
    p.add_argument("--lora-dropout", type=float, default=0.0, metavar="P",
                   help="lora: dropout on the adapters' input")
    p.add_argument("--lora-targets", default="", metavar="NAMES",
                   help="comma-separated layer-name suffixes, e.g. qkv,proj,fc1,fc2 "
                   "(default: every Linear/Conv2d layer of the backbone)")
    p.add_argument("--merge", action="store_true",
                   help="lora: also write checkpoints/merged with the adapters folded in")
    p.add_argument("--config", "-c", metavar="RECIPE",
                   help="a recipe (or run directory) for the training settings")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars, log lines only")
    add_train_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from ..config import build_config
    from ..errors import ConfigError
    from ..finetune import FinetuneConfig, finetune

    over = overrides(args)
    if "dataset" not in over:
        raise ConfigError("dataset: finetune needs --dataset TARGET (e.g. mnist:5-9)")
    expect_model = over.pop("model", None)  # the model is the parent's; --model only checks it
    cfg = build_config(args.config, over)
    ft = FinetuneConfig(
        source=args.source, mode=args.mode, backbone_lr_scale=args.backbone_lr_scale,
        unfreeze_every=args.unfreeze_every, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_targets=tuple(t.strip() for t in args.lora_targets.split(",") if t.strip()),
        merge=args.merge)
    if not args.quiet:
        print("finetune: " + json.dumps(asdict(ft)))
    run_dir = finetune(ft, cfg, expect_model=expect_model)
    print(f"run directory: {run_dir}")
    return 0
