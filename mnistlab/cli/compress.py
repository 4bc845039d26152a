"""`mnistlab compress` and `mnistlab distill`: parse, call mnistlab.compress, print."""

from __future__ import annotations

import argparse

from .common import add_train_flags, command, overrides

SWEEP = "0.5,0.7,0.8,0.9,0.95,0.97,0.98,0.99"
# training settings compress takes as flags; any other field: --set FIELD=VALUE
_TRAIN = (("batch_size", int), ("seed", int), ("threads", int), ("data_dir", str),
          ("device", str))


def register(sub) -> None:
    _register_compress(sub)
    _register_distill(sub)


# ------------------------------------------------------------------------------ compress


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of fractions: {text!r}") from None


def _register_compress(sub) -> None:
    p = command(sub, "compress", "prune and/or quantize a trained run into a new run",
                description="Prune (magnitude; unstructured or whole channels; one-shot or "
                "gradual), fine-tune on the training split (best epoch on validation) and store "
                "integer weights compactly. The result is a new run directory. See "
                "docs/compression.md.")
    p.add_argument("run", metavar="RUN", help="the trained run directory or checkpoint")
    p.add_argument("--prune", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of weights (channels with --structured) to remove, e.g. 0.9")
    p.add_argument("--scope", default="global", metavar="global|layer",
                   help="one ranking over all layers, or each layer alike")
    p.add_argument("--structured", action="store_true",
                   help="remove whole channels/neurons: a narrower, faster dense model")
    p.add_argument("--schedule", default="oneshot", metavar="oneshot|gradual",
                   help="gradual: Zhu & Gupta 2017, sparsity rising during fine-tuning")
    p.add_argument("--ramp", type=float, default=0.5, metavar="F",
                   help="gradual: fraction of the fine-tuning steps over which sparsity rises")
    p.add_argument("--prune-every", type=int, default=0, metavar="STEPS",
                   help="gradual: steps between mask updates (0: ~20 per epoch)")
    p.add_argument("--quantize", default="none", metavar="none|int8",
                   help="int8: per-channel integer weights, stored compactly")
    p.add_argument("--bits", type=int, default=8, metavar="B",
                   help="integer levels 2^B-1 for --quantize (fewer only shrink the file)")
    p.add_argument("--qat", action="store_true",
                   help="quantization-aware fine-tuning (fake-quantized weights and inputs)")
    p.add_argument("--epochs", dest="ft_epochs", type=int, default=1, metavar="N",
                   help="fine-tuning epochs after pruning (0: none)")
    p.add_argument("--lr", dest="ft_lr", type=float, default=0.0, metavar="LR",
                   help="fine-tuning peak learning rate (0: a tenth of the parent's)")
    p.add_argument("--sweep", type=_fractions, default=_fractions(SWEEP), metavar="S,S,...",
                   help=f"sparsities whose accuracy without fine-tuning goes in report.md "
                        f"('' for none; default {SWEEP})")
    p.add_argument("--name", dest="run_name", help="new run directory name")
    p.add_argument("--runs-dir", dest="out_dir",
                   help="where to put it (default: beside the parent run)")
    for f, kind in _TRAIN:
        p.add_argument("--" + f.replace("_", "-"), dest=f, type=kind, default=None,
                       metavar="V", help=f"fine-tuning {f.replace('_', ' ')}")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other fine-tuning setting, e.g. --set weight_decay=1e-4")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=run_compress)


def run_compress(args: argparse.Namespace) -> int:
    from ..compress import CompressConfig, compress

    c = CompressConfig(
        source=args.run, prune=args.prune, scope=args.scope, structured=args.structured,
        schedule=args.schedule, ramp=args.ramp, prune_every=args.prune_every,
        quantize=args.quantize, bits=args.bits, qat=args.qat, epochs=args.ft_epochs,
        lr=args.ft_lr, sweep=args.sweep, name=args.run_name or "", runs_dir=args.out_dir or "",
        train_overrides=overrides(args))
    print(f"run directory: {compress(c)}")
    return 0


# ------------------------------------------------------------------------------ distill


def _register_distill(sub) -> None:
    p = command(sub, "distill", "train a student model on the soft predictions of teacher runs",
                description="Knowledge distillation (Hinton et al. 2015): the student learns "
                "from the teachers' softened predictions (averaged over teachers) and the "
                "labels. See docs/compression.md.")
    p.add_argument("--teacher", action="append", default=[], metavar="RUN",
                   help="a trained run directory or checkpoint (repeat for several)")
    p.add_argument("--student", required=True, metavar="MODEL",
                   help="any model from `mnistlab models` (sets --model)")
    p.add_argument("--student-args", metavar="JSON",
                   help='the student\'s model arguments, e.g. \'{"hidden": [64]}\'')
    p.add_argument("--temperature", "-T", type=float, default=4.0,
                   help="softmax temperature of the soft targets")
    p.add_argument("--alpha", type=float, default=0.9,
                   help="weight of the soft-target loss; 1 - alpha goes to the labels")
    p.add_argument("--config", "-c", metavar="RECIPE",
                   help="a recipe (or run directory) for the student's training settings")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars, log lines only")
    add_train_flags(p)
    p.set_defaults(func=run_distill)


def run_distill(args: argparse.Namespace) -> int:
    import json

    from ..checkpoint import read_meta, resolve
    from ..compress import distill
    from ..config import build_config

    over = overrides(args)
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
