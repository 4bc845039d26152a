"""The NumPy engine's training loop: mini-batch training with an optional L2 penalty,
learning-rate decay per epoch and early stopping on a validation split.

`x` arrays are float32 (N, 784), already normalized; `y` arrays are integer labels (N,).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from .layers import Sequential
from .losses import SoftmaxCrossEntropy
from .optim import Optimizer
from .step import Step, batch_order

__all__ = ["fit", "predict_logits", "evaluate", "lr_at"]


def lr_at(base_lr: float, decay: float | str, epoch: int, epochs: int) -> float:
    """Learning rate for `epoch` (0-based). `decay` is a factor per epoch
    (lr = base * decay**epoch; 1.0 keeps it constant) or "cosine" (from base to 0 over
    `epochs`, half a cosine period)."""
    if isinstance(decay, str):
        if decay == "cosine":
            return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
        if decay == "none":
            return base_lr
        raise ValueError(f"unknown lr_decay {decay!r}; expected a factor, 'cosine' or 'none'")
    if not 0 < decay <= 1:
        raise ValueError(f"lr_decay factor must be in (0, 1], got {decay}")
    return base_lr * decay**epoch


def predict_logits(model: Sequential, x: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
    """Logits (N, C) in evaluation mode (no dropout), computed `batch_size` rows at a time."""
    was_training = model.training
    model.eval()
    try:
        chunks = [model.forward(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    if not chunks:
        return np.empty((0, model.params()[-1].value.shape[-1]), dtype=model.dtype)
    return np.concatenate(chunks)


def evaluate(
    model: Sequential, x: np.ndarray, y: np.ndarray, *, batch_size: int = 1000
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy as a fraction) in evaluation mode."""
    loss_fn = SoftmaxCrossEntropy()
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    try:
        for i in range(0, len(x), batch_size):
            logits = model.forward(x[i : i + batch_size])
            yb = y[i : i + batch_size]
            loss_sum += loss_fn(logits, yb) * len(yb)
            correct += int(np.count_nonzero(loss_fn.pred == yb))
    finally:
        model.train(was_training)
    return loss_sum / len(x), correct / len(x)


def fit(
    model: Sequential,
    opt: Optimizer,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    *,
    epochs: int,
    batch_size: int = 128,
    l2: float = 0.0,
    l1: float = 0.0,
    label_smoothing: float = 0.0,
    lr_schedule: Callable[[int], float] | None = None,
    lr_decay: float | str = 1.0,
    patience: int | None = None,
    monitor: str = "val_loss",
    seed: int = 0,
    on_epoch: Callable[[dict], None] | None = None,
    progress: bool = True,
    start_epoch: int = 0,
    pixel_norm: tuple[float, float] | None = None,
    workers: int = 1,
    log_every: int = 0,
    on_log: Callable[[dict], None] | None = None,
) -> dict:
    """Train `model` with `opt` for up to `epochs` passes over the training set.

    l2:        penalty 0.5 * l2 * sum(W**2) over weights (not biases): adds l2 * W to dW.
    l1:        penalty l1 * sum|W| over weights: adds l1 * sign(W) to dW.
    label_smoothing: trains toward (1 - eps) onehot + eps / C (see SoftmaxCrossEntropy);
               the logged train_loss stays the plain cross-entropy.
    lr_schedule: step -> learning rate (step counts from 0 over the whole run, epochs
               before `start_epoch` included); replaces `lr_decay` when given.
    lr_decay:  per-epoch factor or "cosine" (see `lr_at`), from the optimizer's `base_lr`.
    patience:  stop after this many epochs without a better `monitor` ("val_loss" or
               "val_acc") and restore the best epoch's weights. Needs validation data.
    seed:      the shuffle of epoch e depends only on (seed, e); the model's own seed fixes
               init and dropout.
    on_epoch:  called after each epoch with that epoch's record (the keys below); if it
               returns True, training stops there.
    start_epoch: epochs already done (to resume: the schedule and shuffles continue).
    pixel_norm: (mean, std) when `x_train`/`x_val` are raw uint8 pixels: each batch is
               gathered as uint8 and converted to (x / 255 - mean) / std in a buffer. The
               data stay 4x smaller, and gathering 128 random rows costs ~4x less memory
               traffic than gathering float32 rows (about 5% of a step on MNIST).
    workers:   1, or 2 to split the first layer's rows between this process and a forked
               worker process (parallel.py: ~1.4x faster on 2 cores; Linux/x86-64). The
               result equals one process's up to float rounding (the first layer's sum is
               taken in two parts).
    log_every, on_log: every `log_every` steps (and at each epoch's end), `on_log` gets
               {epoch, step, loss, acc, lr, images_per_s} of the epoch so far.

    Returns {"history": [record per epoch], "best_epoch", "best", "stopped_early",
    "train_seconds"}; a record has epoch, train_loss, train_acc, val_loss, val_acc
    (None without validation), lr, seconds (training only, evaluation excluded),
    images_per_s. Accuracies are fractions.
    """
    has_val = x_val is not None and y_val is not None
    if patience is not None and not has_val:
        raise ValueError("early stopping (patience) needs x_val and y_val")
    if monitor not in ("val_loss", "val_acc"):
        raise ValueError(f"monitor must be 'val_loss' or 'val_acc', got {monitor!r}")
    if pixel_norm is not None:  # raw pixels: normalized batch by batch
        mean, std = pixel_norm
        if np.asarray(x_train).dtype != np.uint8:
            raise ValueError(f"pixel_norm needs uint8 x_train, got {np.asarray(x_train).dtype}")
        scale, shift = 1.0 / (255.0 * std), -mean / std  # (x/255 - mean)/std = scale x + shift
        x_train = np.ascontiguousarray(x_train).reshape(len(x_train), -1)
        if has_val:  # small: converted once
            x_val = np.asarray(x_val).reshape(len(x_val), -1) * np.float32(scale)
            x_val += np.float32(shift)
    else:
        x_train = np.ascontiguousarray(x_train, dtype=model.dtype)  # no copy if already so
        x_train = x_train.reshape(len(x_train), -1)  # images (N, 28, 28) -> (N, 784)
    if has_val:
        x_val = np.ascontiguousarray(x_val, dtype=model.dtype)
    y_train = np.asarray(y_train, dtype=np.intp)
    n = len(x_train)
    norm = None if pixel_norm is None else (scale, shift)
    if workers == 1:
        step = Step(model, opt, x_train, batch_size, norm, l1, l2, label_smoothing)
    elif workers == 2:
        from .parallel import TwoProcessStep

        step = TwoProcessStep(model, opt, x_train, batch_size, norm, l1, l2, label_smoothing,
                              seed=seed)
    else:
        raise ValueError(f"workers must be 1 or 2, got {workers}")

    history: list[dict] = []
    best: dict | None = None
    best_state: dict[str, np.ndarray] | None = None
    stale = 0  # epochs since the monitored metric last improved
    stopped_early = False
    steps_per_epoch = -(-n // batch_size)
    global_step = start_epoch * steps_per_epoch
    try:
        for epoch in range(start_epoch, epochs):
            epoch_lr = lr_at(opt.base_lr, lr_decay, epoch, epochs)
            model.train()
            step.begin_epoch(epoch)
            loss_sum, correct, seen = 0.0, 0, 0
            bar = _progress_bar(n, f"epoch {epoch + 1}/{epochs}") if progress else None
            t0 = time.perf_counter()
            for k, idx in enumerate(batch_order(n, batch_size, seed, epoch)):
                y = y_train[idx]  # (B,)
                lr = lr_schedule(global_step) if lr_schedule is not None else epoch_lr
                loss, pred = step(idx, y, lr)
                global_step += 1
                loss_sum += loss * len(idx)
                correct += int(np.count_nonzero(pred == y))
                seen += len(idx)
                if bar is not None:
                    bar.update(len(idx))
                    if k % 25 == 0:
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                if on_log is not None and (global_step % max(log_every, 1) == 0
                                           or k == steps_per_epoch - 1):
                    on_log({"epoch": epoch + 1, "step": global_step, "loss": loss_sum / seen,
                            "acc": correct / seen, "lr": lr,
                            "images_per_s": seen / (time.perf_counter() - t0)})
            step.end_epoch()
            seconds = time.perf_counter() - t0

            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / n,
                "train_acc": correct / n,
                "val_loss": None,
                "val_acc": None,
                "lr": lr,
                "seconds": seconds,
                "images_per_s": n / seconds,
            }
            if has_val:
                record["val_loss"], record["val_acc"] = evaluate(model, x_val, y_val)
                if best is None or _better(record, best, monitor):
                    best, stale = record, 0
                    best_state = model.state_dict()
                else:
                    stale += 1
            history.append(record)
            if bar is not None:
                post = {"loss": f"{record['train_loss']:.4f}", "acc": f"{record['train_acc']:.4f}"}
                if has_val:
                    post |= {
                        "val_loss": f"{record['val_loss']:.4f}",
                        "val_acc": f"{record['val_acc']:.4f}",
                    }
                bar.set_postfix(post | {"lr": f"{lr:.2e}"})
                bar.close()
            if on_epoch is not None and on_epoch(record):
                break
            if patience is not None and stale >= patience:
                stopped_early = True
                break
    finally:
        step.close()

    if patience is not None and best_state is not None:
        model.load_state_dict(best_state)  # the weights of the best validation epoch
    return {
        "history": history,
        "best_epoch": best["epoch"] if best else None,
        "best": best,
        "stopped_early": stopped_early,
        "train_seconds": sum(r["seconds"] for r in history),
    }


def _better(record: dict, best: dict, monitor: str) -> bool:
    if monitor == "val_acc":  # ties go to the lower loss
        return (record["val_acc"], -record["val_loss"]) > (best["val_acc"], -best["val_loss"])
    return record["val_loss"] < best["val_loss"]


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm  # imported here: the engine itself needs only NumPy

    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, leave=True, dynamic_ncols=True)
