"""`mnistlab tune`: an Optuna search over a recipe's settings, on the validation split."""

from __future__ import annotations

import argparse

from .common import add_train_flags, command, overrides


def register(sub) -> None:
    p = command(sub, "tune", "search hyper-parameters on the validation split (Optuna)",
                description=(
                    "Search a recipe's settings with Optuna (TPE sampling, pruning of trials "
                    "that fall behind). Every trial is a run directory under "
                    "RUNS_DIR/STUDY/; the objective is a validation metric and the test split "
                    "is never seen. At the end: report.md (all trials, plots) and best.toml "
                    "(the best config as a recipe).\n"
                    "Several `mnistlab tune` processes, on one machine or many, share a study "
                    "through --storage (docs/tuning.md).\n"
                    "Training flags below apply to every trial (e.g. --dataset, --threads, "
                    "--epochs)."))
    p.add_argument("recipe", metavar="RECIPE",
                   help="the base: a recipe name, a TOML or JSON file, or a run directory")
    p.add_argument("--space", metavar="SPACE.toml",
                   help="the search space: one table per field (low/high[/log/step] or "
                        "choices), model arguments under [model_args]")
    p.add_argument("--trials", type=int, default=20, metavar="N",
                   help="finished trials the study should hold, counting every worker's")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="stop starting trials after this long (this worker)")
    p.add_argument("--study", metavar="NAME",
                   help="study name and folder under --runs-dir (default: RECIPE-tune)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage shared by the workers, e.g. "
                        "postgresql://USER:PASS@HOST/DB (default: sqlite in the study folder)")
    p.add_argument("--metric", choices=["val_acc", "val_loss"], default="val_acc",
                   help="the objective (maximize accuracy or minimize loss, on validation)")
    p.add_argument("--pruner", choices=["median", "hyperband", "none"], default="median",
                   help="stop trials whose per-epoch validation score falls behind")
    p.add_argument("--heartbeat", type=int, default=30, metavar="SECONDS",
                   help="a running trial beats this often; one silent for 3 beats is failed")
    p.add_argument("--retries", type=int, default=1, metavar="N",
                   help="times a failed trial of a dead worker is queued again")
    p.add_argument("--sampler-seed", type=int, metavar="N",
                   help="seed of the TPE sampler (one worker: a reproducible search)")
    p.add_argument("--no-base-trial", dest="base_trial", action="store_false",
                   help="do not queue the base recipe's own values as a trial (by default "
                   "they are, once per study, so the search is compared with its start)")
    p.add_argument("--report-only", action="store_true",
                   help="run no trial: rewrite the study's report and best.toml from storage")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show each trial's training log, not only one line per trial")
    add_train_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import build_config
    from ..errors import ConfigError
    from ..run import command_line
    from ..tune import load_space, load_study, tune, write_report

    over = overrides(args)
    over["progress"] = False  # one line per trial; the bars of many trials would interleave
    cfg = build_config(args.recipe, over)
    name = args.study or f"{Path(args.recipe.rstrip('/')).stem}-tune"
    if args.report_only:
        study, directory, url = load_study(cfg.runs_dir, name, args.storage)
        write_report(study, directory, url=url, log=print)
        return 0
    if not args.space:
        raise ConfigError("--space: give the search space file (see `mnistlab tune --help`)")
    space = load_space(args.space)
    result = tune(cfg, space, trials=args.trials, study_name=name, storage=args.storage,
                  timeout=args.timeout, metric=args.metric, pruner=args.pruner,
                  heartbeat=args.heartbeat, retries=args.retries,
                  sampler_seed=args.sampler_seed, command=command_line(),
                  space_path=args.space, base_trial=args.base_trial,
                  train_log=print if args.verbose else None)
    if result.best is not None:
        best = result.study.best_trial
        print(f"best: trial {best.number}, {args.metric} {best.value:.4f}; recipe {result.best}")
    return 0
