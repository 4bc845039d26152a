"""What the lesson scripts share: run one `mnistlab train` configuration through the library,
quietly, and read back what it measured; print the equivalent command; tables and plots.

Each lesson states its configurations as dictionaries of TrainConfig fields (the same
names as the `mnistlab train` flags), so ``command(overrides)`` prints the exact command
line a reader can paste, and the test suite runs the same code at reduced size.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
IMG_DIR = REPO / "docs" / "img"  # where the guide's figures go
# every lesson run: one torch thread (the guide's figures were measured so), no progress bars
BASE: dict[str, Any] = {"threads": 1, "progress": False}


def command(overrides: dict[str, Any]) -> str:
    """The `mnistlab train` command line for a configuration (TrainConfig fields)."""
    parts = ["mnistlab", "train"]
    for key, value in overrides.items():
        if key in ("runs_dir", "progress", "eval_test"):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            parts += [flag, json.dumps(value, separators=(",", ":"))]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def run(overrides: dict[str, Any], runs_dir: str | Path, name: str, *,
        reuse: bool = True) -> dict[str, Any]:
    """Train one configuration into ``runs_dir/name`` and return what it measured:
    ``epochs`` (the per-epoch records of metrics.jsonl), ``steps`` (the step records),
    ``val``/``test`` (evaluation of the best checkpoint, test only if evaluated), and
    ``run_dir``. With ``reuse``, a finished run directory is read instead of retrained
    (rerun a lesson to redraw its plots without training again)."""
    from mnistlab.config import build_config
    from mnistlab.training import train

    run_dir = Path(runs_dir) / name
    cfg = build_config(None, {**BASE, **overrides, "runs_dir": str(runs_dir), "name": name})
    if not (reuse and _finished_with(run_dir, cfg.to_dict(), set(overrides))):
        if run_dir.exists():  # an unfinished run, or one of another configuration
            import shutil

            shutil.rmtree(run_dir)
        train(cfg, log=lambda *_: None)
    return read_run(run_dir)


def _finished_with(run_dir: Path, config: dict[str, Any], given: set[str]) -> bool:
    """Whether run_dir holds a finished run of this configuration: every field given
    matches, and so does every other field the saved config has (a field added to mnistlab
    after the run was trained is left at its default by the lessons)."""
    path = run_dir / "config.json"
    if not ((run_dir / "eval_val.json").is_file() and path.is_file()):
        return False
    saved = json.loads(path.read_text())
    for key, value in config.items():
        if key == "runs_dir" or (key not in saved and key not in given):
            continue  # the same directory however named; a field newer than the run
        if json.dumps(saved.get(key)) != json.dumps(value):
            return False
    return True


def read_run(run_dir: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    out: dict[str, Any] = {
        "run_dir": run_dir,
        "epochs": [r for r in records if r["type"] == "epoch"],
        "steps": [r for r in records if r["type"] == "step"],
        "val": json.loads((run_dir / "eval_val.json").read_text()),
        "test": None,
    }
    if (run_dir / "eval_test.json").is_file():
        out["test"] = json.loads((run_dir / "eval_test.json").read_text())
    return out


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def table(header: list[str], rows: Iterable[list[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, name: str, out_dir: Path | None = None) -> Path:
    """Save a small PNG (docs/img/NAME by default) and close the figure."""
    out_dir = Path(out_dir or IMG_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    pyplot().close(fig)
    return path


def default_runs_dir(lesson: str) -> Path:
    """runs/lessons/LESSON under the current directory (or $MNISTLAB_LESSON_RUNS)."""
    return Path(os.environ.get("MNISTLAB_LESSON_RUNS", "runs/lessons")) / lesson
