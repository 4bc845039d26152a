"""`mnistlab calibrate`: fit temperature scaling and the "not a digit" score on a run's
validation split and store them in its checkpoint (for runs trained before calibration was
automatic; new runs are calibrated at the end of training). See mnistlab/calibrate.py."""

from __future__ import annotations

import argparse

from .common import command


def register(sub) -> None:
    p = command(sub, "calibrate", "fit calibrated probabilities and the not-a-digit score",
                description="Fit a temperature (Guo et al. 2017) on the run's validation split, "
                "and the validation quantiles of the energy score behind 'not a digit', and "
                "write them into the checkpoint's metadata (the weights are untouched). eval, "
                "predict and serve then report calibrated probabilities.")
    p.add_argument("run", metavar="RUN", help="run directory or checkpoint path")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--data-dir", help="where the run's dataset is (default: where training "
                   "found it, or $MNISTLAB_DATA_DIR)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..calibrate import calibrate_run

    calibrate_run(args.run, which=args.checkpoint, data_dir=args.data_dir)
    return 0
