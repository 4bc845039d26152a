"""Training: a TrainConfig in, a finished run directory out, on the model's engine.

    train(cfg) -> runs/<name>/   (see run.py for what the directory holds)

Everything is checked before anything is written: the config (each engine honours every
field or refuses it, naming it), the data, and the model's arguments. The engine's loop
(engines/torch_engine.py or engines/numpy_engine.py) then trains through the run scaffold
(run.py); the best checkpoint is then calibrated on the validation split (calibrate.py) and
evaluated once, on the test split, for the report. Model selection and early stopping use
the validation split only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import data as data_mod
from . import distributed
from .checkpoint import load_checkpoint
from .config import RESUMABLE, TrainConfig, from_dict
from .engines import engine_for_model
from .errors import ConfigError, TrainingDiverged, storage_error
from .run import EarlyStopping, RunDir, has_checkpoint, read_run_info, saved_config

__all__ = ["train", "Hooks", "load_splits", "resume_config", "TrainingDiverged"]


@dataclass
class Hooks:
    """What a derived run changes about the torch loop (fine-tuning, pruning, distillation,
    tuning); plain training uses none. Every hook is optional; the NumPy engine refuses
    the ones that act on a torch model."""

    model: Any = None  # a prepared torch model instead of building cfg.model
    lr_scales: dict[str, float] | None = None  # name prefix -> lr multiplier
    on_epoch_start: Callable[[int, Any, Any], None] | None = None  # (epoch, model, optimizer)
    # loss(logits, y, x) -> scalar tensor, replacing cross-entropy (e.g. distillation); the
    # L1/L2 penalties are still added
    loss: Callable[[Any, Any, Any], Any] | None = None
    after_step: Callable[[int, Any], None] | None = None  # (step, model), e.g. re-apply
    # pruning masks after the optimizer moved the weights
    on_epoch_end: Callable[[int, dict], None] | None = None  # (epoch, epoch record) after
    # validation and checkpoints; may raise to stop the run (e.g. a pruned Optuna trial)
    meta: dict[str, Any] = field(default_factory=dict)  # provenance for the checkpoints and
    # run.json (parent, finetune, adapter, ...)


def load_splits(cfg: TrainConfig) -> tuple[data_mod.Dataset, data_mod.Dataset]:
    """(train, val) for a config; few-label runs keep only N labelled images per class."""
    kw = dict(data_dir=cfg.data_dir or None, val_size=None if cfg.val_size < 0 else cfg.val_size,
              seed=cfg.val_seed)
    train_ds = data_mod.load(cfg.dataset, "train", **kw)
    val_ds = data_mod.load(cfg.dataset, "val", **kw)
    if cfg.labels_per_class:
        train_ds, _unlabelled = data_mod.few_labels(train_ds, cfg.labels_per_class, seed=cfg.seed)
    if len(val_ds) == 0:
        raise ConfigError("val_size: the run needs a validation split (val_size 0 leaves none)")
    return train_ds, val_ds


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config of a run to resume, with ``overrides`` of the fields that cannot change
    what the run is (``config.RESUMABLE``: epochs to extend it, threads, device, ...).
    Any other field given with a different value is refused."""
    cfg = saved_config(run_dir)
    overrides = dict(overrides or {})
    changed = sorted(k for k, v in cfg.replace(**overrides).to_dict().items()
                     if v != getattr(cfg, k) and k not in RESUMABLE)
    if changed:
        raise ConfigError(f"{changed[0]}: cannot change when resuming (it would change what "
                          f"the run is); --resume takes only {', '.join(RESUMABLE)}. Start a "
                          "new run with --config RUN_DIR to reuse the rest of its settings")
    return cfg.replace(**overrides)


def train(cfg: TrainConfig, *, hooks: Hooks | None = None, resume: str | Path | None = None,
          log: Callable[[str], None] = print, report: bool = True) -> Path:
    """Train a model as ``cfg`` says and return its run directory.

    ``resume``: a run directory to continue from the end of its last completed epoch (its
    ``last`` checkpoint holds the training state); a run that died before its first
    checkpoint starts over in place.

    ``cfg.nproc`` > 1: once everything is checked, ``nproc`` new processes train the run
    together (distributed.py); their rank 0 prints the log lines and writes the run. Under
    torchrun this function runs in every rank, and only rank 0 writes.

    ``report=False`` skips the report (plots, report.md, eval_*.json: most of a very short
    run's time); `mnistlab report RUN` writes it later. Tuning trials use it.
    """
    hooks = hooks or Hooks()
    engine = engine_for_model(cfg.model)
    engine.check(cfg, hooks)
    ctx = distributed.env_context()  # this process's rank in a data-parallel run, or None
    primary = ctx is None or ctx.primary
    if not primary:
        log = _silent
    if resume is not None:
        info = read_run_info(resume)
        if hooks.model is not None or info.get("parent") or info.get("finetune"):
            raise ConfigError("resume: a derived run (fine-tuned, pruned, distilled) cannot be "
                              "resumed: its preparation is not replayed; start it again")
        if not has_checkpoint(Path(resume), "last"):
            log(f"{resume} has no checkpoint to continue from (it stopped during its first "
                "epoch): starting it over")

    # --- data and model, checked before anything is written
    train_ds, val_ds = load_splits(cfg)
    # a folder of the user's by its resolved path, so that the run (its config, run.json and
    # checkpoints) finds its data again from any working directory
    cfg = cfg.replace(dataset=train_ds.name)
    state = None
    if resume is not None and has_checkpoint(Path(resume), "last"):
        ck = load_checkpoint(resume, which="last", device="cpu", with_train_state=True)
        if "train_state" not in ck.meta:
            raise ConfigError(f"resume: {ck.path} holds no training state")
        if ck.meta["classes"] != list(train_ds.classes):
            raise ConfigError(f"resume: {ck.path} was trained on other classes")
        model, state = ck.model, ck.meta["train_state"]
    elif hooks.model is not None:
        model = hooks.model
    else:
        model = engine.build(cfg.model, cfg.model_args, train_ds.num_classes, seed=cfg.seed)
    run = RunDir.prepare(cfg, engine, classes=list(train_ds.classes),
                         normalization={"mean": train_ds.mean, "std": train_ds.std},
                         extra=hooks.meta, resume=resume, primary=primary)
    if cfg.nproc > 1 and ctx is None:  # checked, nothing written: the ranks take over
        ranked = cfg.replace(name=run.path.name) if resume is None else cfg
        distributed.launch("mnistlab.training:_rank_main",
                           [ranked.to_dict(), None if resume is None else str(resume)],
                           cfg.nproc, log=log)
        return run.path

    # --- train, then the report (the test split is evaluated here, once)
    run.start(resumed=state is not None)
    try:
        if state is not None and _finished(cfg, state):
            log(f"{run.path} has already trained {state['epoch'] + 1} of {cfg.epochs} epochs"
                + (" and stopped early" if _stopped(state) else "")
                + "; nothing to resume (pass --epochs N to train further); report rewritten")
            run.train_seconds = float(state.get("train_seconds", 0.0))
            run.epochs_done = int(state["epoch"]) + 1
        else:
            result = engine.fit(cfg, run, model, train_ds, val_ds, hooks=hooks, state=state,
                                log=log)
            if primary:
                run.info["parameters"] = result.get("parameters")
                run.info["hardware"].update(result.get("hardware", {}))
        run.finish()
    except OSError as e:  # a full disk, a read-only or vanished folder
        run.fail(e)
        raise storage_error(e, f"cannot write the run {run.path}",
                            "free some space or choose another --runs-dir, then continue "
                            f"with `mnistlab train --resume {run.path}`") from e
    except BaseException as e:
        run.fail(e)
        raise
    if not primary:
        return run.path
    from .calibrate import calibrate_run
    from .report import write_report

    try:  # calibrated on the validation split (the report then shows it), then the report
        calibrate_run(run.path, data_dir=cfg.data_dir or None, log=log)
        if report:
            write_report(run.path, eval_test=cfg.eval_test, log=log,
                         train_seconds=run.train_seconds)
    except OSError as e:
        raise storage_error(e, f"the run finished (checkpoints in {run.path / 'checkpoints'}) "
                            "but its report could not be written",
                            f"free some space, then `mnistlab report {run.path}`") from e
    return run.path


def _rank_main(cfg: dict[str, Any], resume: str | None) -> None:
    """One rank of ``train(cfg)`` with ``cfg.nproc`` > 1 (distributed.launch runs it)."""
    train(from_dict(cfg), resume=resume)


def _silent(*_: Any) -> None:
    pass


def _stopped(state: dict[str, Any]) -> bool:
    return EarlyStopping(**state["early_stopping"]).should_stop


def _finished(cfg: TrainConfig, state: dict[str, Any]) -> bool:
    return int(state["epoch"]) + 1 >= cfg.epochs or _stopped(state)
