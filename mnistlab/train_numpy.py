"""`mnistlab train --model numpy-mlp`: the NumPy engine behind the same front door.

Same data splits, same progress bar style, same run directory (config.json, metrics.jsonl,
best/last checkpoints, plots, report.md) as the torch loop, so `eval`, `predict` and
`serve` work on the result. Weights are stored as ``.npz`` (read with
``allow_pickle=False``) next to the usual JSON metadata; see docs/from-scratch.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import scratch
from .checkpoint import atomic_write_json, base_meta, save_checkpoint
from .config import ConfigError, TrainConfig

DEFAULT_ARGS = {"hidden": [512, 256], "activation": "relu", "dropout": 0.0, "init": "he"}


def build_from_meta(name: str, args: dict) -> scratch.Sequential:
    """Rebuild a NumPy-engine model from checkpoint metadata (``model_args``)."""
    if name != "numpy-mlp":
        raise ValueError(f"unknown NumPy-engine model {name!r}")
    args = dict(args)
    dtype = np.dtype(args.pop("dtype", "float32"))
    return scratch.build_mlp(args.pop("sizes"), dtype=dtype, **args)


def _unsupported(cfg: TrainConfig) -> str | None:
    """The first TrainConfig setting the NumPy engine does not implement, if any."""
    checks = [
        (cfg.optimizer in ("sgd", "adam", "rmsprop"), "optimizer",
         f"{cfg.optimizer!r}; it has sgd (with momentum/nesterov), adam and rmsprop"),
        (cfg.schedule in ("constant", "exponential", "cosine"), "schedule",
         f"{cfg.schedule!r}; it has constant, exponential and cosine"),
        (cfg.augment == "none", "augment", "augmentation (it trains on the raw images)"),
        (cfg.l1 == 0, "l1", "an L1 penalty (use l2)"),
        (cfg.weight_decay == 0, "weight_decay", "decoupled weight decay (use l2)"),
        (cfg.label_smoothing == 0, "label_smoothing", "label smoothing"),
        (cfg.grad_clip == 0, "grad_clip", "gradient clipping"),
        (cfg.warmup_epochs == 0, "warmup_epochs", "warm-up"),
        (not cfg.amp and not cfg.compile, "amp", "mixed precision or compilation"),
    ]
    for ok, name, what in checks:
        if not ok:
            return f"{name}: the NumPy engine does not support {what}"
    return None


def train_numpy(cfg: TrainConfig, *, log: Callable[[str], None] = print) -> Path:
    from .calibrate import calibrate_run
    from .report import write_report
    from .train import RunLog, default_run_name, load_splits

    problem = _unsupported(cfg)
    if problem:
        raise ConfigError(problem)
    if cfg.workers == 2:
        from .scratch import parallel

        if parallel.supported():
            raise ConfigError(f"workers: 2 {parallel.supported()}; use 1")
    unknown = set(cfg.model_args) - set(DEFAULT_ARGS)
    if unknown:
        raise ConfigError(f"model_args: numpy-mlp takes {sorted(DEFAULT_ARGS)}, got {sorted(unknown)}")
    run_dir = Path(cfg.runs_dir) / (cfg.name or default_run_name(cfg))
    if (run_dir / "checkpoints").exists():
        raise ConfigError(f"name: run directory {run_dir} already has checkpoints; choose another")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", cfg.to_dict())

    train, val = load_splits(cfg)

    # raw uint8 pixels; fit normalizes each batch ((x/255 - mean)/std) as it gathers it
    x_train = train.images.reshape(len(train), -1)
    x_val = val.images.reshape(len(val), -1)
    args = {**DEFAULT_ARGS, **cfg.model_args}
    sizes = [784, *args.pop("hidden"), train.num_classes]
    model = scratch.build_mlp(sizes, seed=cfg.seed, **args)
    kw = {"momentum": cfg.momentum, "nesterov": cfg.nesterov} if cfg.optimizer == "sgd" else {}
    opt = scratch.make_optimizer(cfg.optimizer, model.params(), lr=cfg.lr, **kw)
    decay = {"constant": 1.0, "exponential": cfg.gamma, "cosine": "cosine"}[cfg.schedule]
    n_params = sum(p.value.size for p in model.params())
    log(f"run {run_dir}  model numpy-mlp {sizes} ({n_params:,} parameters, NumPy engine)  "
        f"data {cfg.dataset} train {len(train):,} val {len(val):,}")

    steps_per_epoch = -(-len(train) // cfg.batch_size)
    best_acc = -1.0
    runlog = RunLog(run_dir, cfg.tensorboard)  # metrics.jsonl (+ TensorBoard), as the torch loop

    def on_epoch(rec: dict) -> None:
        nonlocal best_acc
        step = rec["epoch"] * steps_per_epoch
        runlog.write({"type": "epoch", "step": step, **rec})
        meta = base_meta(engine="numpy", model="numpy-mlp", model_args=model.config,
                         classes=list(train.classes),
                         normalization={"mean": train.mean, "std": train.std},
                         dataset=cfg.dataset,
                         split={"val_size": cfg.val_size, "seed": cfg.seed,
                                "labels_per_class": cfg.labels_per_class},
                         seed=cfg.seed, epoch=rec["epoch"], step=step,
                         metrics={"val_loss": rec["val_loss"], "val_acc": rec["val_acc"]})
        improved = rec["val_acc"] > best_acc
        if improved or not cfg.restore_best:
            best_acc = max(best_acc, rec["val_acc"])
            save_checkpoint(run_dir / "checkpoints" / "best", model, meta)
        save_checkpoint(run_dir / "checkpoints" / "last", model, meta)
        log(f"epoch {rec['epoch']}/{cfg.epochs}  train loss {rec['train_loss']:.4f} "
            f"acc {rec['train_acc']:.4f}  val loss {rec['val_loss']:.4f} acc {rec['val_acc']:.4f}"
            f"  lr {rec['lr']:.2e}  {rec['seconds']:.1f}s ({rec['images_per_s']:,.0f} img/s)"
            + ("  *best*" if improved else ""))

    try:
        result = scratch.fit(
            model, opt, x_train, train.labels, x_val, val.labels, epochs=cfg.epochs,
            batch_size=cfg.batch_size, l2=cfg.l2, lr_decay=decay,
            patience=cfg.patience if cfg.early_stop != "none" else None,
            monitor=cfg.early_stop if cfg.early_stop != "none" else "val_loss",
            seed=cfg.seed, on_epoch=on_epoch, progress=cfg.progress,
            pixel_norm=(train.mean, train.std), workers=cfg.workers)
    finally:
        runlog.close()
    if result["stopped_early"]:
        log(f"early stopping: best epoch {result['best_epoch']}")
    if len(val):
        calibrate_run(run_dir, data_dir=cfg.data_dir or None, log=log)
    write_report(run_dir, eval_test=cfg.eval_test, log=log, train_seconds=result["train_seconds"])
    return run_dir
