"""The `mnistlab` command: parse arguments, call the library, print. No logic lives here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence

from .config import ConfigError, TrainConfig


def _train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (--batch-size ...), all optional overrides."""
    g = p.add_argument_group("training settings (override the recipe; see docs/training.md)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        comment = _field_comments().get(f.name, "")
        if f.type in ("bool", bool):
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=comment)
        else:
            g.add_argument(flag, dest=f.name, default=None, metavar="V", help=comment)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any field, e.g. --set lr=0.01 (repeatable)")


def _field_comments() -> dict[str, str]:
    """Field help from the comments in config.py, so the docs are written once."""
    import inspect
    import re

    from . import config

    out = {}
    for line in inspect.getsource(config.TrainConfig).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).replace("%", "%%")
    return out


def _overrides(args: argparse.Namespace) -> dict:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if getattr(args, f.name, None) is not None}
    for item in args.sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--set: expected FIELD=VALUE, got {item!r}")
        values[key.strip().replace("-", "_")] = value
    if args.quiet:
        values["progress"] = False
    return values


# ------------------------------------------------------------------------------ commands


def cmd_train(args: argparse.Namespace) -> int:
    from .config import build_config
    from .train import resume_config, train

    if args.resume:
        cfg = resume_config(args.resume)
        over = _overrides(args)
        if over:
            cfg = cfg.replace(**over)
        train(cfg, resume=args.resume)
        return 0
    cfg = build_config(args.config, _overrides(args))
    if not args.quiet:
        print("config: " + json.dumps(cfg.to_dict()))
    run_dir = train(cfg)
    print(f"run directory: {run_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_metrics
    from .report import write_eval_artifacts

    ev = evaluate(args.run, args.split, which=args.checkpoint, data_dir=args.data_dir,
                  dataset=args.dataset)
    if args.json:
        print(json.dumps({k: v for k, v in ev.metrics.items() if k != "confusion"}))
    else:
        print(format_metrics(ev.metrics, f"== {args.split} split of {ev.dataset.name}, "
                                         f"{args.checkpoint} checkpoint of {args.run} =="))
    if not args.no_plots and ev.checkpoint.path.parent.name == "checkpoints" and not args.dataset:
        run_dir = ev.checkpoint.path.parent.parent
        write_eval_artifacts(ev, run_dir, args.split)
        if not args.json:
            print(f"plots: {run_dir / 'plots'}/confusion_{args.split}.png, "
                  f"mistakes_{args.split}.png")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .models import create_model
    from .summary import format_summary, summarize

    kwargs = json.loads(args.args) if args.args else {}
    print(format_summary(args.model, summarize(create_model(args.model, **kwargs))))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .models import count_parameters, create_model, list_models

    for name in list_models():
        m = create_model(name)
        doc = (type(m).__doc__ or "").strip().splitlines()[0]
        print(f"{name:<16} {count_parameters(m):>10,} params  {doc}")
    print(f"{'numpy-mlp':<16} {'':>10}         the from-scratch NumPy engine (see docs/from-scratch.md)")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from .config import list_recipes

    for name, description, result in list_recipes():
        figures = ", ".join(f"{k} {v}" for k, v in result.items() if k != "command")
        print(f"{name:<14} {description}")
        if figures:
            print(f"{'':<14} measured: {figures}")
        if "command" in result:
            print(f"{'':<14} reproduce: {result['command']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    write_report(args.run, eval_test=not args.no_test)
    return 0


# ------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="mnistlab", description="Develop, train, evaluate, fine-tune and deploy models on "
        "MNIST-style data.")
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (a recipe and/or flags)")
    p.add_argument("--config", "-c", help="a recipe name (see `mnistlab recipes`) or TOML file")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run directory")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars, log lines only")
    _train_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a run's checkpoint on a split")
    p.add_argument("run", help="run directory or checkpoint path")
    p.add_argument("--split", choices=["val", "test", "train"], default="val")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--dataset", help="evaluate on another dataset with the same classes")
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true", help="print metrics as one JSON object")
    p.add_argument("--no-plots", action="store_true", help="do not write plots to the run")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="re-evaluate a run and rewrite its plots and report.md")
    p.add_argument("run")
    p.add_argument("--no-test", action="store_true", help="validation split only")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("summary", help="per-layer table: output shapes, parameters, FLOPs")
    p.add_argument("model")
    p.add_argument("--args", help='model arguments as JSON, e.g. \'{"widths": [8, 16]}\'')
    p.set_defaults(func=cmd_summary)

    sub.add_parser("models", help="list registered models").set_defaults(func=cmd_models)
    sub.add_parser("recipes", help="list recipes and their measured results").set_defaults(
        func=cmd_recipes)

    # commands that live with their own modules
    from .cli_calibrate import add_parser as add_calibrate_parser
    from .cli_data import add_data_parser
    from .finetune import add_finetune_parser
    from .predict import add_predict_parser
    from .serve import add_serve_parser

    for add in (add_data_parser, add_finetune_parser, add_predict_parser, add_serve_parser,
                add_calibrate_parser):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ConfigError, DataError, CheckpointError) as e:
        print(f"mnistlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mnistlab: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:
        from .train import TrainingDiverged

        if isinstance(e, TrainingDiverged):
            print(f"mnistlab: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
