"""`mnistlab report`: re-evaluate a run and rewrite its plots and report.md."""

from __future__ import annotations

import argparse

from .common import command


def register(sub) -> None:
    p = command(sub, "report", "re-evaluate a run and rewrite its plots and report.md")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--no-test", action="store_true", help="validation split only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..report import write_report

    write_report(args.run, eval_test=not args.no_test)
    return 0
