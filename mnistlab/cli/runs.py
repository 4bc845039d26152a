"""`mnistlab runs` and `mnistlab compare`: all runs in one table; runs side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import command

COLUMNS = (("name", "run", "{}"), ("status", "status", "{}"), ("model", "model", "{}"),
           ("dataset", "dataset", "{}"), ("parameters", "params", "{:,}"),
           ("epochs", "epochs", "{}"), ("val_acc", "val acc", "{:.2%}"),
           ("test_acc", "test acc", "{:.2%}"), ("ece", "ECE", "{:.2%}"),
           ("seconds", "train time", "{:.1f} s"))


def register(sub) -> None:
    p = command(sub, "runs", "one table of all runs in a folder (unfinished ones too)")
    p.add_argument("runs_dir", nargs="?", default="runs", metavar="DIR",
                   help="the folder holding run directories")
    p.add_argument("--json", action="store_true", help="one JSON object per run")
    p.set_defaults(func=run_runs)
    p = command(sub, "compare", "runs side by side, and one PNG overlaying their curves")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--out", "-o", default="compare.png", metavar="PNG",
                   help="where to write the learning-curve overlay")
    p.add_argument("--json", action="store_true", help="one JSON object per run")
    p.set_defaults(func=run_compare)


def format_table(rows: list[dict]) -> str:
    cells = [[h for _, h, _ in COLUMNS]]
    for row in rows:
        cells.append(["-" if row.get(k) is None else fmt.format(row[k]) for k, _, fmt in COLUMNS])
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(r, widths))).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _print(rows: list[dict], as_json: bool) -> None:
    import json

    if as_json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(format_table(rows))


def run_runs(args: argparse.Namespace) -> int:
    from ..api import list_runs

    runs = list_runs(args.runs_dir)
    if not runs and not args.json:
        print(f"no runs in {args.runs_dir}")
        return 0
    _print([r.summary() for r in runs], args.json)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from ..api import load_run
    from ..report import plot_compare

    runs = [load_run(p) for p in args.runs]
    _print([r.summary() for r in runs], args.json)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_compare([(r.name, [*r.steps, *r.history]) for r in runs], out)
    if not args.json:
        print(f"learning curves: {out}")
    return 0
