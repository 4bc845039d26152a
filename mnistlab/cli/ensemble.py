"""`mnistlab ensemble`: average trained runs' probabilities into a run directory of its own."""

from __future__ import annotations

import argparse

from .common import command


def register(sub) -> None:
    p = command(sub, "ensemble", "average the probabilities of trained runs (an ensemble run)",
                description=(
                    "Make an ensemble of trained runs: it predicts the mean of the members' "
                    "probabilities (each at its calibration temperature, where the run was "
                    "calibrated). It is written as a run directory that eval, predict, serve "
                    "and report accept, evaluated on validation (when the members share their "
                    "validation split: train them with one --split-seed) and on test. Members "
                    "must predict the same classes of the same dataset."))
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (two or more)")
    p.add_argument("--name", required=True, help="the ensemble's run directory name")
    p.add_argument("--runs-dir", default="runs", metavar="DIR",
                   help="where the ensemble's run directory goes")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="which checkpoint of each run joins")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..ensemble import create_ensemble

    path = create_ensemble(args.runs, name=args.name, runs_dir=args.runs_dir,
                           which=args.checkpoint)
    print(f"run directory: {path}")
    return 0
