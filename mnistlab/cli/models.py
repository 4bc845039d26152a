"""`mnistlab models`, `summary` and `recipes`: what can be built and trained."""

from __future__ import annotations

import argparse

from .common import command


def register(sub) -> None:
    command(sub, "models", "list registered models of both engines").set_defaults(
        func=run_models)
    p = command(sub, "summary", "per-layer table of a model: output shapes, parameters, FLOPs")
    p.add_argument("model", help="a model name from `mnistlab models`")
    p.add_argument("--args", metavar="JSON",
                   help='model arguments as JSON, e.g. \'{"widths": [8, 16]}\'')
    p.add_argument("--classes", type=int, default=10, help="number of output classes")
    p.set_defaults(func=run_summary)
    command(sub, "recipes", "list recipes and their measured results").set_defaults(
        func=run_recipes)


def run_models(args: argparse.Namespace) -> int:
    from ..engines import get_engine, list_models

    for name, (engine_name, doc) in list_models().items():
        engine = get_engine(engine_name)
        n = engine.num_parameters(engine.build(name, {}, 10))
        print(f"{name:<16} {engine_name:<6} {n:>10,} params  {doc}")
    return 0


def run_summary(args: argparse.Namespace) -> int:
    from ..config import coerce
    from ..engines import engine_for_model
    from ..summary import format_summary

    engine = engine_for_model(args.model)
    kwargs = coerce("model_args", args.args) if args.args else {}
    model = engine.build(args.model, kwargs, args.classes)
    print(format_summary(args.model, engine.summary(model)))
    return 0


def run_recipes(args: argparse.Namespace) -> int:
    from ..config import list_recipes

    for name, description, result in list_recipes():
        figures = ", ".join(f"{k} {v}" for k, v in result.items() if k != "command")
        print(f"{name:<14} {description}")
        if figures:
            print(f"{'':<14} measured: {figures}")
        if "command" in result:
            print(f"{'':<14} reproduce: {result['command']}")
    return 0
