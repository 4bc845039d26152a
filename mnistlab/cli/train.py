"""`mnistlab train`: train from a recipe and flags, or continue a run."""

from __future__ import annotations

import argparse

from .common import add_train_flags, command, overrides


def register(sub) -> None:
    p = command(sub, "train", "train a model (a recipe and/or flags)", description=(
        "Train a model. Settings come from field defaults < --config (a recipe name, a TOML "
        "file, or a run directory / its config.json to reproduce it) < flags.\n"
        "Every setting is a flag below; --print-config shows the result without training."))
    p.add_argument("--config", "-c", metavar="RECIPE",
                   help="a recipe name (see `mnistlab recipes`), a TOML or JSON file, or a run "
                        "directory")
    p.add_argument("--resume", metavar="RUN",
                   help="continue an interrupted run (only epochs, threads, device, progress, "
                        "eval_test and tensorboard may change)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as a TOML recipe and exit")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars, log lines only")
    add_train_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import build_config, to_toml
    from ..errors import ConfigError
    from ..training import resume_config, train

    over = overrides(args)
    if args.resume:
        if args.config:
            raise ConfigError("--config: a resumed run keeps its own config; drop --config")
        cfg = resume_config(args.resume, over)
    else:
        cfg = build_config(args.config, over)
        _refuse_derived_config(args.config)
    if args.print_config:
        print(to_toml(cfg), end="")
        return 0
    run_dir = train(cfg, resume=args.resume)
    from ..distributed import env_context

    ctx = env_context()
    if ctx is None or ctx.primary:  # under torchrun, every rank runs this command
        print(f"run directory: {run_dir}")
    return 0


def _refuse_derived_config(config: str | None) -> None:
    """A fine-tuned run's config.json holds its training settings only: reproducing it
    needs `mnistlab finetune`, which reads the same file."""
    if not config:
        return
    from pathlib import Path

    from ..errors import ConfigError
    from ..run import read_run_info

    path = Path(config)
    run_dir = path if path.is_dir() else path.parent
    info = read_run_info(run_dir) if (run_dir / "run.json").is_file() else {}
    if info.get("finetune"):
        parent = (info.get("parent") or {}).get("path", "PARENT")
        raise ConfigError(f"config: {run_dir} was fine-tuned from {parent}; reproduce it with "
                          f"`mnistlab finetune --from {parent} --config {run_dir} --mode "
                          f"{info['finetune'].get('mode')}`")
