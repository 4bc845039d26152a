"""`mnistlab eval`: evaluate a run's checkpoint on a split."""

from __future__ import annotations

import argparse

from .common import command


def register(sub) -> None:
    p = command(sub, "eval", "evaluate a run's checkpoint on a split",
                description="Accuracy, loss, per-class precision/recall/F1, confusions and "
                "calibration of a checkpoint on its own dataset's split (or another dataset "
                "with the same classes). Writes eval_<split>[_last].json and plots into the "
                "run unless --no-plots.")
    p.add_argument("run", metavar="RUN", help="run directory or checkpoint path")
    p.add_argument("--split", choices=["val", "test", "train"], default="val")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--dataset", help="evaluate on another dataset with the same classes")
    p.add_argument("--data-dir", metavar="DIR", help="where to look for the dataset")
    p.add_argument("--json", action="store_true", help="print metrics as one JSON object")
    p.add_argument("--no-plots", action="store_true", help="do not write files into the run")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="CPU threads (0: the library default)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..errors import ConfigError
    from ..evaluate import evaluate, format_metrics
    from ..report import write_eval_artifacts

    if args.threads < 0:
        raise ConfigError(f"--threads: must be >= 0, got {args.threads}")
    ev = evaluate(args.run, args.split, which=args.checkpoint, data_dir=args.data_dir,
                  dataset=args.dataset, device=args.device, threads=args.threads)
    if args.json:
        print(json.dumps({k: v for k, v in ev.metrics.items() if k != "confusion"}))
    else:
        print(format_metrics(ev.metrics, f"== {args.split} split of {ev.dataset.name}, "
                                         f"{args.checkpoint} checkpoint of {args.run} =="))
    if not args.no_plots and ev.checkpoint.path.parent.name == "checkpoints" and not args.dataset:
        run_dir = ev.checkpoint.path.parent.parent
        paths = write_eval_artifacts(ev, run_dir, args.split, which=args.checkpoint)
        if not args.json:
            print("wrote " + ", ".join(str(p) for p in paths))
    return 0
