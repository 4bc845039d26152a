"""The run scaffold both engines train through: one run directory, one policy.

    runs/<name>/config.json     the resolved TrainConfig (``--config`` reads it back)
    runs/<name>/run.json        status, command, times, hardware, provenance (parent, ...)
    runs/<name>/metrics.jsonl   one JSON object per logged step and per epoch
    runs/<name>/checkpoints/    best.* (best validation score) and last.* (+ training state)
    runs/<name>/plots/, report.md, eval_<split>.json   written by report.py at the end

An engine's loop calls ``log_step`` every ``log_every`` steps and ``end_epoch`` once per
epoch; ``end_epoch`` applies the policy the two engines share: the validation score that
picks the best checkpoint and stops early (``early_stop``; val_acc when it is "none"),
saving best and last, and the epoch's log line. Nothing is written before the config, the
data and the model have been checked; a run that fails before its first checkpoint leaves
no directory behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import (
    atomic_write_bytes,
    atomic_write_json,
    base_meta,
    save_checkpoint,
)
from .config import TrainConfig, from_dict
from .errors import ConfigError, TrainingDiverged

# run.json "status" values
RUNNING, FINISHED, FAILED, DIVERGED, INTERRUPTED = (
    "running", "finished", "failed", "diverged", "interrupted")


def default_run_name(cfg: TrainConfig) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    dataset = Path(cfg.dataset).name if os.sep in cfg.dataset else cfg.dataset
    return f"{cfg.model}-{dataset.replace(':', '_')}-{stamp}"


def has_checkpoint(run_dir: Path, which: str = "*") -> bool:
    return any((run_dir / "checkpoints").glob(f"{which}.json"))


def hardware() -> dict[str, Any]:
    """The CPU as the OS names it, its core count and the platform (engines add the device
    and threads they used)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(terse=True),
            "python": platform.python_version()}


def remove_stale_temporaries(run_dir: Path) -> int:
    """Delete the temporary files (``.NAME.tmp<pid>``) a killed process left in a run
    directory, if that process is gone; returns how many were removed."""
    removed = 0
    for p in run_dir.rglob(".*.tmp*"):
        pid = p.name.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


# ------------------------------------------------------------------------------ metrics log


class RunLog:
    """metrics.jsonl writer (+ optional TensorBoard)."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError("tensorboard: install it with pip install tensorboard "
                                  "(it also needs torch)") from e
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{record['type']}/{k}", v, record["step"])

    def truncate_after(self, step: int) -> None:
        """On resume: keep the records up to the checkpoint's step, so no step is logged
        twice; a torn last line (a crash or a full disk mid-write) is dropped."""
        kept = [r for r in read_records(self.path) if r.get("step", 0) <= step]
        atomic_write_json_lines(self.path, kept)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_records(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; lines that do not parse (torn writes) are skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "type" in rec:
            out.append(rec)
    return out


def atomic_write_json_lines(path: Path, records: list[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


# ------------------------------------------------------------------------------ policy


@dataclass
class EarlyStopping:
    """The validation score that picks the best checkpoint (higher is better: accuracy, or
    minus the loss) and, unless ``mode`` is "none", stops the run after ``patience`` epochs
    without improvement."""

    mode: str  # "none" | "val_acc" | "val_loss"
    patience: int
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def score(self, val: dict) -> float:
        return -val["loss"] if self.mode == "val_loss" else val["acc"]

    def update(self, epoch: int, val: dict) -> bool:
        """Record an epoch; True if it is the best so far."""
        s = self.score(val)
        if s > self.best:
            self.best, self.best_epoch, self.bad_epochs = s, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.mode != "none" and self.bad_epochs >= self.patience


# ------------------------------------------------------------------------------ the run


class RunDir:
    """One run directory while it trains. Engines use ``log_step``, ``end_epoch``, ``meta``
    and ``save``; train.py creates it, and calls ``finish`` or ``fail``.

    In a data-parallel run every rank keeps one (the same bookkeeping, the same decisions),
    but only the primary rank (rank 0) writes: the others' ``primary`` is False."""

    def __init__(self, path: Path, cfg: TrainConfig, engine: Any, *, extra: dict[str, Any],
                 classes: list[str], normalization: dict[str, float], created: bool,
                 primary: bool = True):
        self.path, self.cfg, self.engine, self.primary = path, cfg, engine, primary
        self.extra = extra  # provenance for checkpoints and run.json (parent, finetune, ...)
        self.classes, self.normalization = classes, normalization
        self.created = created  # this process made the directory (so may remove it)
        self.stopper = EarlyStopping(cfg.early_stop, cfg.patience)
        self.info: dict[str, Any] = {}
        self.log: RunLog | None = None
        self.train_seconds = 0.0  # cumulative over resumed sessions
        self.epochs_done = 0

    # --- lifecycle

    @classmethod
    def prepare(cls, cfg: TrainConfig, engine: Any, *, classes: list[str],
                normalization: dict[str, float], extra: dict[str, Any] | None = None,
                resume: str | Path | None = None, primary: bool = True) -> RunDir:
        """Check where the run goes (nothing is written yet)."""
        if resume is not None:
            path = Path(resume)
        else:
            path = Path(cfg.runs_dir) / (cfg.name or default_run_name(cfg))
            if has_checkpoint(path):
                raise ConfigError(f"name: run directory {path} already has checkpoints; choose "
                                  "another --name or continue it with --resume")
        parent = path.parent
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"runs_dir: {parent} is not a folder")
        return cls(path, cfg, engine, extra=dict(extra or {}), classes=classes,
                   normalization=normalization, created=not path.exists(), primary=primary)

    def start(self, *, resumed: bool) -> None:
        """Create the directory and write config.json and run.json."""
        if not self.primary:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.path)
            if not resumed:  # a new run, or one that died before its first checkpoint
                atomic_write_json(self.path / "config.json", self.cfg.to_dict())
                (self.path / "metrics.jsonl").unlink(missing_ok=True)
        except OSError as e:
            raise ConfigError(f"runs_dir: cannot write the run directory {self.path} "
                              f"({e.strerror}); choose another --runs-dir") from None
        previous = read_run_info(self.path) if resumed else {}
        self.info = {
            **previous,
            "status": RUNNING,
            "engine": self.engine.name,
            "model": self.cfg.model,
            "dataset": self.cfg.dataset,
            "command": previous.get("command") or command_line(),
            "started": previous.get("started") or _now(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "hardware": hardware(),
            **self.extra,
        }
        if resumed:
            self.info["resumed"] = previous.get("resumed", 0) + 1
            self.info.pop("finished", None)
        self.write_info()
        self.log = RunLog(self.path, self.cfg.tensorboard)

    def write_info(self) -> None:
        if self.primary:
            atomic_write_json(self.path / "run.json", self.info)

    def fail(self, error: BaseException) -> None:
        """Record how the run ended; remove the directory if nothing worth keeping exists."""
        if self.log is not None:
            self.log.close()
        if not self.primary:
            return
        if self.created and not has_checkpoint(self.path):
            shutil.rmtree(self.path, ignore_errors=True)
            return
        if not self.path.is_dir():
            return
        # an error may say how the run ended (a tuning trial's hook raises one with "pruned")
        status = getattr(error, "run_status", None) or (
            INTERRUPTED if isinstance(error, KeyboardInterrupt)
            else DIVERGED if isinstance(error, TrainingDiverged) else FAILED)
        self.info.update(status=status, error=str(error).splitlines()[0] if str(error) else
                         type(error).__name__, train_seconds=self.train_seconds, ended=_now())
        try:
            self.write_info()
        except OSError:
            pass

    def finish(self) -> None:
        if self.log is not None:
            self.log.close()
        if not self.primary:
            return
        self.info.update(status=FINISHED, train_seconds=round(self.train_seconds, 3),
                         finished=_now(), epochs_done=self.epochs_done)
        self.write_info()

    # --- what the engines call

    def meta(self, model_args: dict[str, Any], **fields: Any) -> dict[str, Any]:
        """Checkpoint metadata: everything needed to rebuild and use the model."""
        c = self.cfg
        return base_meta(
            engine=self.engine.name, model=c.model, model_args=model_args,
            classes=self.classes, normalization=self.normalization, dataset=c.dataset,
            split={"val_size": c.val_size, "seed": c.val_seed,
                   "labels_per_class": c.labels_per_class,
                   **({"data_dir": c.data_dir} if c.data_dir else {})},
            seed=c.seed, **self.extra, **fields)

    def save(self, which: str, model: Any, meta: dict[str, Any],
             train_state: dict[str, Any] | None = None) -> None:
        if self.primary:
            save_checkpoint(self.path / "checkpoints" / which, model, meta, train_state=train_state)

    def log_step(self, *, epoch: int, step: int, loss: float, acc: float, lr: float,
                 images_per_s: float) -> dict:
        """A step record; stops the run (TrainingDiverged) if the loss is not finite or
        above ``max_loss``."""
        if not math.isfinite(loss) or loss > self.cfg.max_loss:
            raise TrainingDiverged(
                f"training loss is {loss:.4g} at epoch {epoch}, step {step} (limit "
                f"max_loss={self.cfg.max_loss:g}); stopped. The last good checkpoint is kept "
                f"in {self.path / 'checkpoints'}. Try a lower --lr or --grad-clip.")
        rec = {"type": "step", "epoch": epoch, "step": step, "loss": loss, "acc": acc, "lr": lr,
               "images_per_s": images_per_s}
        if self.log is not None:
            self.log.write(rec)
        return rec

    def end_epoch(self, *, epoch: int, step: int, train: dict, val: dict, lr: float,
                  seconds: float, model: Any, model_args: dict[str, Any],
                  train_state: Callable[[], dict[str, Any]], log: Callable) -> tuple[dict, bool]:
        """Log epoch ``epoch`` (0-based), save best and last; returns (record, stop?).

        ``train``: {"loss", "acc", "images"} of the epoch (loss without label smoothing's
        term when the engine can tell, as "loss"); ``val``: {"loss", "acc"};
        ``train_state()``: what resuming needs, saved with ``last``."""
        self.train_seconds += seconds
        is_best = self.stopper.update(epoch, val)
        rec = {"type": "epoch", "epoch": epoch + 1, "step": step, "train_loss": train["loss"],
               "train_acc": train["acc"], "val_loss": val["loss"], "val_acc": val["acc"],
               "lr": lr, "seconds": seconds, "images_per_s": train["images"] / max(seconds, 1e-9)}
        if self.log is not None:
            self.log.write(rec)
        log(f"epoch {epoch + 1}/{self.cfg.epochs}  train loss {rec['train_loss']:.4f} "
            f"acc {rec['train_acc']:.4f}  val loss {val['loss']:.4f} acc {val['acc']:.4f}  "
            f"lr {lr:.2e}  {seconds:.1f}s ({rec['images_per_s']:,.0f} img/s)"
            + ("  *best*" if is_best else ""))
        meta = self.meta(model_args, epoch=epoch + 1, step=step,
                         metrics={"val_loss": val["loss"], "val_acc": val["acc"]})
        if is_best:
            self.save("best", model, meta)
        if self.primary:
            state = {**train_state(), "early_stopping": vars(self.stopper).copy(),
                     "epoch": epoch, "step": step, "train_seconds": self.train_seconds}
            self.save("last", model, meta, train_state=state)
        self.epochs_done = epoch + 1
        stop = self.stopper.should_stop
        if stop:
            log(f"early stopping: no {self.cfg.early_stop} improvement for {self.cfg.patience} "
                f"epochs; best epoch {self.stopper.best_epoch + 1}")
        return rec, stop

    def end_training(self, model: Any, model_args: dict[str, Any], last_rec: dict) -> None:
        """With ``restore_best`` off, the last weights are the result: they become "best"."""
        if not self.cfg.restore_best:
            meta = self.meta(model_args, epoch=last_rec["epoch"], step=last_rec["step"],
                             metrics={"val_loss": last_rec["val_loss"],
                                      "val_acc": last_rec["val_acc"]})
            self.save("best", model, meta)

    def restore(self, state: dict[str, Any], log: Callable) -> tuple[int, int]:
        """Resume bookkeeping from a ``last`` checkpoint's state: (start epoch, step)."""
        self.stopper = EarlyStopping(**state["early_stopping"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.epochs_done = int(state["epoch"]) + 1
        step = int(state["step"])
        if self.log is not None:
            self.log.truncate_after(step)
        log(f"resuming {self.path} at epoch {state['epoch'] + 2}, step {step}")
        return int(state["epoch"]) + 1, step


# ------------------------------------------------------------------------------ reading runs


def command_line() -> str:
    """How this process was started, as a shell line (for run.json and report.md)."""
    import shlex

    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("mnistlab", "__main__.py"):
        argv[0] = "mnistlab"
    return " ".join(shlex.quote(a) for a in argv)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def saved_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig a run was started with (its config.json)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"resume: {path} not found; is {run_dir} a mnistlab run directory?")
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"resume: cannot read {path} ({e})") from None
    return from_dict(values)
