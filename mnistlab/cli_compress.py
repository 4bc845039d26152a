"""``mnistlab compress`` and ``mnistlab distill``: parse, call mnistlab.compress, print."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .config import ConfigError

# training settings these commands take as flags; any other field: --set FIELD=VALUE
_COMMON = (("epochs", int), ("lr", float), ("batch_size", int), ("seed", int),
           ("threads", int), ("dataset", str), ("data_dir", str), ("name", str),
           ("runs_dir", str), ("device", str))


def _overrides(args: argparse.Namespace, fields: tuple[str, ...]) -> dict[str, Any]:
    values = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    for item in args.sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--set: expected FIELD=VALUE, got {item!r}")
        values[key.strip().replace("-", "_")] = value
    if args.quiet:
        values["progress"] = False
    return values


def _add_common(p: argparse.ArgumentParser, fields: tuple[str, ...], what: str) -> None:
    for f, kind in _COMMON:
        if f in fields:
            p.add_argument("--" + f.replace("_", "-"), dest=f, type=kind, default=None,
                           metavar="V", help=f"{what} {f.replace('_', ' ')}")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other training setting, e.g. --set weight_decay=1e-4 (repeatable)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


# ------------------------------------------------------------------------------ compress

_COMPRESS_TRAIN = ("batch_size", "seed", "threads", "data_dir", "device")


def cmd_compress(args: argparse.Namespace) -> int:
    from .compress import CompressConfig, compress

    sweep = tuple(float(s) for s in args.sweep.split(",") if s.strip()) if args.sweep else ()
    c = CompressConfig(
        source=args.run, prune=args.prune, scope=args.scope, structured=args.structured,
        schedule=args.schedule, ramp=args.ramp, prune_every=args.prune_every,
        quantize=args.quantize, bits=args.bits, qat=args.qat, epochs=args.epochs, lr=args.lr,
        sweep=sweep, name=args.name or "", runs_dir=args.runs_dir or "",
        train_overrides=_overrides(args, _COMPRESS_TRAIN))
    run_dir = compress(c)
    print(f"run directory: {run_dir}")
    return 0


def _fraction_list(text: str) -> str:
    for s in text.split(","):
        if s.strip():
            try:
                float(s)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a list of fractions: {text!r}") from None
    return text


def add_compress_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compress", help="prune and/or quantize a trained run into a new run",
        description="Prune (magnitude; unstructured or whole channels; one-shot or gradual), "
        "fine-tune on the training split (best epoch on validation) and store integer weights "
        "compactly. The result is a new run directory. See docs/compression.md.")
    p.add_argument("run", metavar="RUN", help="the trained run directory or checkpoint")
    p.add_argument("--prune", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of weights (or channels with --structured) to remove, "
                        "e.g. 0.9")
    p.add_argument("--scope", default="global",
                   help="global (one ranking over all layers, default) or layer (each alike)")
    p.add_argument("--structured", action="store_true",
                   help="remove whole channels/neurons: a narrower, faster dense model")
    p.add_argument("--schedule", default="oneshot",
                   help="oneshot (default) or gradual (Zhu & Gupta 2017, during fine-tuning)")
    p.add_argument("--ramp", type=float, default=0.5, metavar="F",
                   help="gradual: fraction of the fine-tuning steps over which sparsity rises")
    p.add_argument("--prune-every", type=int, default=0, metavar="STEPS",
                   help="gradual: steps between mask updates (default ~20 per epoch)")
    p.add_argument("--quantize", default="none",
                   help="none (default) or int8: per-channel integer weights, stored compactly")
    p.add_argument("--bits", type=int, default=8, metavar="B",
                   help="integer levels 2^B-1 for --quantize (default 8; fewer only shrink "
                        "the file)")
    p.add_argument("--qat", action="store_true",
                   help="quantization-aware fine-tuning (fake-quantized weights and inputs)")
    p.add_argument("--epochs", type=int, default=1, metavar="N",
                   help="fine-tuning epochs after pruning (default 1; 0: none)")
    p.add_argument("--lr", type=float, default=0.0, metavar="LR",
                   help="fine-tuning peak learning rate (default: a tenth of the parent's)")
    p.add_argument("--sweep", type=_fraction_list, default=",".join(
        str(s) for s in (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)), metavar="S,S,...",
        help="sparsities whose accuracy without fine-tuning goes in report.md ('' for none)")
    p.add_argument("--name", help="new run directory name")
    p.add_argument("--runs-dir", help="where to put it (default: beside the parent run)")
    _add_common(p, _COMPRESS_TRAIN, "fine-tuning")
    p.set_defaults(func=cmd_compress)
    return p


# ------------------------------------------------------------------------------ distill

_DISTILL_TRAIN = ("epochs", "lr", "batch_size", "seed", "threads", "dataset", "data_dir", "name",
                  "runs_dir", "device")


def cmd_distill(args: argparse.Namespace) -> int:
    from .checkpoint import read_meta, resolve
    from .compress import distill
    from .config import build_config

    over = _overrides(args, _DISTILL_TRAIN)
    over["model"] = args.student
    if args.student_args:
        over["model_args"] = args.student_args
    if "dataset" not in over and args.teacher:  # the teachers' data unless told otherwise
        over["dataset"] = read_meta(resolve(args.teacher[0]))["dataset"]
    cfg = build_config(args.config, over)
    if not args.quiet:
        print("config: " + json.dumps(cfg.to_dict()))
    run_dir = distill(args.teacher, cfg, temperature=args.temperature, alpha=args.alpha)
    print(f"run directory: {run_dir}")
    return 0


def add_distill_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "distill", help="train a student model on the soft predictions of teacher runs",
        description="Knowledge distillation (Hinton et al. 2015): the student learns from the "
        "teachers' softened predictions (averaged over teachers) and the labels. "
        "See docs/compression.md.")
    p.add_argument("--teacher", action="append", default=[], metavar="RUN",
                   help="a trained run directory or checkpoint (repeat for several)")
    p.add_argument("--student", required=True, metavar="MODEL",
                   help="any model from `mnistlab models`")
    p.add_argument("--student-args", metavar="JSON",
                   help='the student\'s model arguments, e.g. \'{"hidden": [64]}\'')
    p.add_argument("--temperature", "-T", type=float, default=4.0,
                   help="softmax temperature of the soft targets (default 4)")
    p.add_argument("--alpha", type=float, default=0.9,
                   help="weight of the soft-target loss; 1 - alpha goes to the labels "
                        "(default 0.9)")
    p.add_argument("--config", "-c", help="a recipe for the student's training settings")
    _add_common(p, _DISTILL_TRAIN, "training")
    p.set_defaults(func=cmd_distill)
    return p


def add_parser(subparsers: Any) -> None:
    """Register ``compress`` and ``distill``."""
    add_compress_parser(subparsers)
    add_distill_parser(subparsers)
