"""The training loop: one visible loop from a TrainConfig to a run directory.

    runs/<name>/config.json        the resolved TrainConfig (+ fine-tuning parent, if any)
    runs/<name>/metrics.jsonl      one JSON object per logged step and per epoch
    runs/<name>/checkpoints/       best.* (best validation) and last.* (+ training state)
    runs/<name>/plots/, report.md  written by report.py at the end

Model selection and early stopping use the validation split only; the test split is
evaluated once, at the end, for the report.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import data as data_mod
from .augment import Augment, augment_preset
from .checkpoint import atomic_write_json, base_meta, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, from_dict
from .loader import BatchLoader
from .models import count_parameters, create_model
from .optim import LRSchedule, build_optimizer, decoupled_decay, param_groups, penalty


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or exploded; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------- setup


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} requested but CUDA is not available")
        if name == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("device: 'mps' requested but Apple MPS is not available")
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def load_splits(cfg: TrainConfig) -> tuple[data_mod.Dataset, data_mod.Dataset]:
    """(train, val) for a config; few-label runs keep only N labelled images per class."""
    kw = dict(data_dir=cfg.data_dir or None, val_size=None if cfg.val_size < 0 else cfg.val_size,
              seed=cfg.seed)
    train = data_mod.load(cfg.dataset, "train", **kw)
    val = data_mod.load(cfg.dataset, "val", **kw)
    if cfg.labels_per_class:
        train, _unlabelled = data_mod.few_labels(train, cfg.labels_per_class, seed=cfg.seed)
    return train, val


def default_run_name(cfg: TrainConfig) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{cfg.model}-{cfg.dataset.replace(':', '_')}-{stamp}"


# ------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate_loader(model: torch.nn.Module, loader: BatchLoader, amp_dtype=None) -> dict:
    """Mean loss and accuracy of ``model`` over a (non-augmented) loader."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    return {"loss": loss_sum / max(n, 1), "acc": correct / max(n, 1)}


# ----------------------------------------------------------------------------- run state


@dataclass
class EarlyStopping:
    mode: str  # "none" | "val_acc" | "val_loss"
    patience: int
    best: float = -math.inf  # higher is better (accuracy, or -loss)
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


@dataclass
class Hooks:
    """What a derived run changes about the loop (fine-tuning, pruning, distillation,
    tuning); plain training uses none. Every hook is optional."""

    model: torch.nn.Module | None = None  # a prepared model instead of create_model(...)
    lr_scales: dict[str, float] | None = None  # name prefix -> lr multiplier
    on_epoch_start: Callable[[int, torch.nn.Module, torch.optim.Optimizer], None] | None = None
    # loss(logits, y, x) -> scalar tensor, replacing cross-entropy (e.g. distillation); the
    # L1/L2 penalties are still added
    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    after_step: Callable[[int, torch.nn.Module], None] | None = None  # (step, model), e.g.
    # re-apply pruning masks after the optimizer moved the weights
    on_epoch_end: Callable[[int, dict], None] | None = None  # (epoch, epoch record) after
    # validation and checkpoints; may raise to stop the run (e.g. a pruned Optuna trial)
    meta: dict[str, Any] = field(default_factory=dict)  # extra checkpoint metadata (parent...)


class RunLog:
    """metrics.jsonl writer (+ optional TensorBoard)."""

    def __init__(self, run_dir: Path, tensorboard: bool):
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError("tensorboard: install it with pip install tensorboard") from e
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(f"{record['type']}/{k}", v, record["step"])

    def truncate_after(self, step: int) -> None:
        """On resume: drop records past the checkpoint, so no step is logged twice."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in keep))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def checkpoint_meta(cfg: TrainConfig, model: torch.nn.Module, train: data_mod.Dataset,
                    hooks: Hooks, **fields: Any) -> dict:
    return base_meta(
        engine="torch",
        model=cfg.model,
        model_args=model.config,
        classes=list(train.classes),
        normalization={"mean": train.mean, "std": train.std},
        dataset=cfg.dataset,
        split={"val_size": cfg.val_size, "seed": cfg.seed, "labels_per_class": cfg.labels_per_class},
        seed=cfg.seed,
        **hooks.meta,
        **fields,
    )


# -------------------------------------------------------------------------------- train


def train(cfg: TrainConfig, *, hooks: Hooks | None = None, resume: str | Path | None = None,
          log: Callable[[str], None] = print) -> Path:
    """Train a model as ``cfg`` says and return its run directory.

    ``resume``: a run directory whose ``last`` checkpoint holds the training state; the run
    continues from the end of its last completed epoch.
    """
    hooks = hooks or Hooks()
    if cfg.model == "numpy-mlp":
        if resume:
            raise ConfigError("resume: the NumPy engine does not support --resume")
        from .train_numpy import train_numpy

        return train_numpy(cfg, log=log)

    # --- setup
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed, cfg.deterministic)
    amp_dtype = None
    if cfg.amp:
        amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    run_dir = Path(resume) if resume else Path(cfg.runs_dir) / (cfg.name or default_run_name(cfg))
    if not resume and (run_dir / "checkpoints").exists():
        raise ConfigError(f"name: run directory {run_dir} already has checkpoints; choose "
                          "another --name or continue it with --resume")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

    # --- data: the whole split lives on the device as uint8; batches normalized there
    train_ds, val_ds = load_splits(cfg)
    augment = None if cfg.augment == "none" else Augment(augment_preset(cfg.augment), seed=cfg.seed)
    train_loader = BatchLoader(train_ds.images, train_ds.labels, batch_size=cfg.batch_size,
                               mean=train_ds.mean, std=train_ds.std, shuffle=True, seed=cfg.seed,
                               device=device, augment=augment)
    val_loader = BatchLoader(val_ds.images, val_ds.labels, batch_size=1000, mean=train_ds.mean,
                             std=train_ds.std, shuffle=False, device=device)

    # --- model and optimizer
    model = hooks.model if hooks.model is not None else create_model(
        cfg.model, num_classes=train_ds.num_classes, **cfg.model_args)
    model.to(device)
    optimizer = build_optimizer(cfg, param_groups(model, hooks.lr_scales))
    schedule = LRSchedule(cfg, len(train_loader))
    stopper = EarlyStopping(cfg.early_stop, cfg.patience)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
    step_fn = torch.compile(model) if cfg.compile else model
    runlog = RunLog(run_dir, cfg.tensorboard)
    start_epoch, step = 0, 0

    if resume:
        ck = load_checkpoint(run_dir, which="last", device=str(device), with_train_state=True)
        model.load_state_dict(ck.model.state_dict())
        st = ck.meta["train_state"]
        optimizer.load_state_dict(st["optimizer"])
        schedule.load_state_dict(st["schedule"])
        stopper = EarlyStopping(**st["early_stopping"])
        torch.set_rng_state(st["torch_rng"])
        if augment is not None:
            augment.load_state_dict(st["augment"])
        start_epoch, step = st["epoch"] + 1, st["step"]
        runlog.truncate_after(step)
        log(f"resuming {run_dir} at epoch {start_epoch + 1}, step {step}")
    else:
        atomic_write_json(run_dir / "config.json", {**cfg.to_dict(), **hooks.meta})

    n_total, n_train = count_parameters(model), count_parameters(model, trainable_only=True)
    log(f"run {run_dir}  model {cfg.model} ({n_train:,} trainable / {n_total:,} parameters)  "
        f"data {cfg.dataset} train {len(train_ds):,} val {len(val_ds):,}  device {device}")

    def save(name: str, val: dict, epoch: int, with_state: bool) -> None:
        state = None
        if with_state:
            state = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                     "early_stopping": vars(stopper).copy(), "torch_rng": torch.get_rng_state(),
                     "augment": augment.state_dict() if augment else None,
                     "epoch": epoch, "step": step}
        meta = checkpoint_meta(cfg, model, train_ds, hooks, epoch=epoch + 1, step=step,
                               metrics={"val_loss": val["loss"], "val_acc": val["acc"]})
        save_checkpoint(run_dir / "checkpoints" / name, model, meta, train_state=state)

    # --- the loop
    from tqdm.auto import tqdm

    train_seconds = 0.0
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        if hooks.on_epoch_start is not None:  # after train(): it may put frozen BN in eval mode
            hooks.on_epoch_start(epoch, model, optimizer)
        train_loader.epoch = epoch  # the permutation depends only on (seed, epoch)
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
                   leave=False, unit="batch")
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, t0 = 0, time.perf_counter()
        for i, (x, y) in enumerate(bar):
            lr = schedule.apply(optimizer, step)
            # forward
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = step_fn(x)
                if hooks.loss is not None:
                    loss = hooks.loss(logits.float(), y, x)
                else:
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            total = loss + penalty(cfg, model)
            # backward and update
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            decoupled_decay(cfg, optimizer)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            if hooks.after_step is not None:
                hooks.after_step(step, model)
            # bookkeeping without a device sync on every step
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if step % cfg.log_every == 0 or i == len(train_loader) - 1:
                mean_loss = loss_sum.item() / seen
                if not math.isfinite(mean_loss) or mean_loss > cfg.max_loss:
                    runlog.close()
                    raise TrainingDiverged(
                        f"training loss is {mean_loss:.4g} at epoch {epoch + 1}, step {step} "
                        f"(limit max_loss={cfg.max_loss}); stopped. The last good checkpoint is "
                        f"kept in {run_dir / 'checkpoints'}. Try a lower --lr or --grad-clip.")
                ips = seen / (time.perf_counter() - t0)
                rec = {"type": "step", "epoch": epoch + 1, "step": step, "loss": mean_loss,
                       "acc": correct.item() / seen, "lr": lr, "images_per_s": ips}
                runlog.write(rec)
                bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{rec['acc']:.4f}", lr=f"{lr:.2e}",
                                img_s=f"{ips:,.0f}")
        epoch_seconds = time.perf_counter() - t0
        train_seconds += epoch_seconds

        # --- end of epoch: validation, schedule, early stopping, checkpoints
        val = evaluate_loader(model, val_loader, amp_dtype)
        schedule.end_epoch(stopper.score(val) if cfg.early_stop != "none" else val["acc"])
        is_best = stopper.update(epoch, val)
        rec = {"type": "epoch", "epoch": epoch + 1, "step": step,
               "train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
               "val_loss": val["loss"], "val_acc": val["acc"], "lr": lr,
               "seconds": epoch_seconds, "images_per_s": seen / epoch_seconds}
        runlog.write(rec)
        log(f"epoch {epoch + 1}/{cfg.epochs}  train loss {rec['train_loss']:.4f} "
            f"acc {rec['train_acc']:.4f}  val loss {val['loss']:.4f} acc {val['acc']:.4f}  "
            f"lr {lr:.2e}  {epoch_seconds:.1f}s ({rec['images_per_s']:,.0f} img/s)"
            + ("  *best*" if is_best else ""))
        if is_best:
            save("best", val, epoch, with_state=False)
        save("last", val, epoch, with_state=True)
        if hooks.on_epoch_end is not None:
            hooks.on_epoch_end(epoch, rec)
        if stopper.should_stop:
            log(f"early stopping: no {cfg.early_stop} improvement for {cfg.patience} epochs; "
                f"best epoch {stopper.best_epoch + 1}")
            break
    runlog.close()

    # --- calibration (validation split), final evaluation and report (test split only here)
    from .calibrate import calibrate_run
    from .report import write_report

    if not cfg.restore_best:  # the last weights are the result
        save("best", val, epoch, with_state=False)
    if len(val_ds):
        calibrate_run(run_dir, data_dir=cfg.data_dir or None, log=log)
    write_report(run_dir, eval_test=cfg.eval_test, log=log, train_seconds=train_seconds)
    return run_dir


def resume_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig a run was started with (its config.json)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"resume: {path} not found; is {run_dir} a mnistlab run directory?")
    values = json.loads(path.read_text())
    known = set(TrainConfig.__dataclass_fields__)
    return from_dict({k: v for k, v in values.items() if k in known})
