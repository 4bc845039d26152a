"""The NumPy engine behind the same front door: `mnistlab train --model numpy-mlp`.

The from-scratch network (scratch/) trains through the same run scaffold as the torch
loop: same data splits, schedules (schedules.py), best/last policy, metrics, checkpoints,
report, and resume. Weights are stored as ``.npz`` (read with ``allow_pickle=False``).
It never imports torch. Settings it does not implement are refused in ``check``.
"""

from __future__ import annotations

import io
from contextlib import nullcontext
from typing import Any

import numpy as np

from .. import scratch
from ..config import TrainConfig
from ..distributed import env_context
from ..errors import ConfigError
from ..schedules import LRSchedule

MODEL = "numpy-mlp"
DEFAULT_ARGS = {"hidden": [512, 256], "activation": "relu", "dropout": 0.0, "init": "he"}
MAX_PARAMETERS = 200_000_000
ACTIVATIONS = ("relu", "sigmoid", "tanh")
INITS = ("he", "xavier")

# settings this engine does not implement: (field, is it at a value it honours?, why)
_REFUSED = (
    ("augment", lambda c: c.augment == "none", "augmentation (it trains on the raw images)"),
    ("rendered", lambda c: c.rendered == "none", "rendered training digits "
     "(it trains on the dataset's own images)"),
    ("weight_decay", lambda c: c.weight_decay == 0, "decoupled weight decay (use --l2)"),
    ("grad_clip", lambda c: c.grad_clip == 0, "gradient clipping"),
    ("epoch_fraction", lambda c: c.epoch_fraction == 1, "training on part of the split per "
     "epoch (it takes all of it)"),
    ("optimizer", lambda c: c.optimizer in ("sgd", "adam", "rmsprop"),
     "optimizer {v!r}; it has sgd (momentum, nesterov), adam and rmsprop"),
    ("amp", lambda c: not c.amp, "mixed precision (it computes in float32)"),
    ("compile", lambda c: not c.compile, "compilation (that is torch.compile)"),
    ("device", lambda c: c.device in ("auto", "cpu"), "device {v!r}: it runs on the CPU"),
    ("nproc", lambda c: c.nproc == 1, "data-parallel processes (--workers 2 splits its first "
     "layer over two processes instead)"),
)


def _check_args(args: dict[str, Any]) -> None:
    """model_args of numpy-mlp, checked before anything is built."""
    unknown = set(args) - set(DEFAULT_ARGS)
    if unknown:
        raise ConfigError(f"model_args: numpy-mlp takes {sorted(DEFAULT_ARGS)}, got "
                          f"{sorted(unknown)}")
    a = {**DEFAULT_ARGS, **args}
    hidden = a["hidden"]
    if not (isinstance(hidden, list) and all(isinstance(h, int) and not isinstance(h, bool)
                                             and h >= 1 for h in hidden)):
        raise ConfigError(f"model_args: hidden must be a list of widths >= 1, got {hidden!r}")
    if a["activation"] not in ACTIVATIONS:
        raise ConfigError(f"model_args: activation must be one of {', '.join(ACTIVATIONS)}, "
                          f"got {a['activation']!r}")
    if a["init"] not in INITS:
        raise ConfigError(f"model_args: init must be one of {', '.join(INITS)}, got {a['init']!r}")
    d = a["dropout"]
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
        raise ConfigError(f"model_args: dropout must be in [0, 1), got {d!r}")


def _bounded(sizes: list[int]) -> None:
    n = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    if n > MAX_PARAMETERS:
        raise ConfigError(f"model_args: numpy-mlp {sizes} has {n:,} parameters, more than "
                          f"mnistlab builds ({MAX_PARAMETERS:,})")


class NumpyEngine:
    name = "numpy"
    weights_suffix = ".npz"

    def models(self) -> dict[str, str]:
        return {MODEL: "the from-scratch NumPy MLP (see docs/from-scratch.md)"}

    def check(self, cfg: TrainConfig, hooks: Any = None) -> None:
        for name, ok, what in _REFUSED:
            if not ok(cfg):
                raise ConfigError(f"{name}: the NumPy engine does not support "
                                  + what.format(v=getattr(cfg, name)))
        if cfg.workers == 2:
            from ..scratch import parallel

            why = parallel.supported()
            if why:
                raise ConfigError(f"workers: 2 {why}; use 1")
            if cfg.threads > 1:
                raise ConfigError("threads: with --workers 2 each process uses one BLAS "
                                  "thread; leave --threads at 0 or 1")
        ctx = env_context()
        if ctx is not None:
            raise ConfigError(f"nproc: the NumPy engine trains in one process, but this is rank "
                              f"{ctx.rank} of {ctx.world_size} (torchrun); run it without torchrun")
        if hooks is not None and any(getattr(hooks, h) is not None for h in
                                     ("model", "loss", "after_step", "lr_scales",
                                      "on_epoch_start")):
            raise ConfigError("model: fine-tuning, pruning and distillation need a torch "
                              f"model; {MODEL} is the NumPy engine's")

    def build(self, model: str, model_args: dict[str, Any], num_classes: int, *,
              seed: int = 0) -> scratch.Sequential:
        _check_args(model_args)
        args = {**DEFAULT_ARGS, **model_args}
        sizes = [784, *args.pop("hidden"), num_classes]
        _bounded(sizes)
        return scratch.build_mlp(sizes, seed=seed, **args)

    def from_meta(self, meta: dict[str, Any]) -> scratch.Sequential:
        if meta["model"] != MODEL:
            raise ConfigError(f"unknown NumPy-engine model {meta['model']!r}")
        args = dict(meta["model_args"])
        try:
            dtype = np.dtype(args.pop("dtype", "float32"))
            sizes = args.pop("sizes")
            if not (isinstance(sizes, list) and len(sizes) >= 2 and all(
                    isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes)):
                raise ValueError(f"sizes must list widths >= 1, got {sizes!r}")
            _bounded(sizes)
            return scratch.build_mlp(sizes, dtype=dtype, **args)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"model_args do not describe a {MODEL}: {e}") from None

    def model_args(self, model: scratch.Sequential) -> dict[str, Any]:
        return dict(model.config)

    def weights_bytes(self, model: scratch.Sequential) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in model.state_dict().items()})
        return buf.getvalue()

    def load_weights(self, model: scratch.Sequential, blob: bytes) -> None:
        try:
            arrays = dict(np.load(io.BytesIO(blob), allow_pickle=False))
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"not an .npz archive of arrays ({e})") from None
        model.load_state_dict(arrays)

    def set_threads(self, n: int) -> None:
        if n > 0:
            from threadpoolctl import threadpool_limits

            threadpool_limits(n, user_api="blas")  # for the rest of the process

    def to_device(self, model: scratch.Sequential, device: str) -> None:
        if device not in ("cpu", "auto"):
            raise ConfigError(f"device: the NumPy engine runs on the CPU, not {device!r}")
        model.eval()

    def logits(self, model: scratch.Sequential, x: np.ndarray, batch_size: int = 1024
               ) -> np.ndarray:
        return scratch.predict_logits(model, x.reshape(len(x), -1), batch_size=batch_size)

    def num_parameters(self, model: scratch.Sequential, trainable_only: bool = False) -> int:
        return model.num_params()

    def summary(self, model: scratch.Sequential) -> dict[str, Any]:
        """Per layer: output width, parameters and forward FLOPs per image (a multiply-add
        counts 2, as torch's counter does)."""
        rows, width = [], 784
        for i, layer in enumerate(model.layers):
            params = sum(p.value.size for p in layer.params())
            flops = 0
            if isinstance(layer, scratch.Linear):
                width = layer.weight.value.shape[1]
                flops = 2 * layer.weight.value.size
            rows.append({"layer": str(i), "type": type(layer).__name__, "output": (1, width),
                         "params": params, "flops": flops})
        total = model.num_params()
        return {"rows": rows, "params": total, "trainable": total,
                "flops": sum(r["flops"] for r in rows)}

    # --- training

    def fit(self, cfg: TrainConfig, run: Any, model: scratch.Sequential, train: Any, val: Any,
            *, hooks: Any, state: dict[str, Any] | None, log: Any) -> dict[str, Any]:
        # raw uint8 pixels; fit normalizes each batch ((x/255 - mean)/std) as it gathers it
        x_train = train.images.reshape(len(train), -1)
        x_val = val.images.reshape(len(val), -1)
        kw: dict[str, Any] = {}
        if cfg.optimizer == "sgd":
            kw = {"momentum": cfg.momentum, "nesterov": cfg.nesterov}
        elif cfg.optimizer == "adam":
            kw = {"betas": cfg.betas}
        elif cfg.optimizer == "rmsprop":
            kw = {"momentum": cfg.momentum}
        opt = scratch.make_optimizer(cfg.optimizer, model.params(), lr=cfg.lr, **kw)
        steps_per_epoch = -(-len(train) // cfg.batch_size)
        schedule = LRSchedule(cfg, steps_per_epoch)
        dropouts = [m for m in model.layers if isinstance(m, scratch.Dropout)]
        start_epoch = 0
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            for layer, rng_state in zip(dropouts, state["dropout_rng"]):
                layer.rng.bit_generator.state = rng_state
            start_epoch, _ = run.restore(state, log)
        log(f"run {run.path}  model {MODEL} {model.config['sizes']} ({model.num_params():,} "
            f"parameters, NumPy engine)  data {cfg.dataset} train {len(train):,} "
            f"val {len(val):,}")

        def train_state() -> dict[str, Any]:
            return {"optimizer": opt.state_dict(), "schedule": schedule.state_dict(),
                    "dropout_rng": [d.rng.bit_generator.state for d in dropouts]}

        def on_epoch(rec: dict) -> bool:
            step = rec["epoch"] * steps_per_epoch
            val_m = {"loss": rec["val_loss"], "acc": rec["val_acc"]}
            schedule.end_epoch(run.stopper.score(val_m))
            out, stop = run.end_epoch(
                epoch=rec["epoch"] - 1, step=step, lr=rec["lr"], seconds=rec["seconds"],
                model=model, model_args=self.model_args(model), train_state=train_state,
                log=log, val=val_m, train={"loss": rec["train_loss"], "acc": rec["train_acc"],
                                           "images": len(train)})
            last[0] = out
            if hooks.on_epoch_end is not None:  # e.g. a tuning trial reports and may be pruned
                hooks.on_epoch_end(rec["epoch"] - 1, out)
            return stop

        def on_log(rec: dict) -> None:
            run.log_step(**rec)

        last: list[dict] = [{}]
        from threadpoolctl import threadpool_info, threadpool_limits

        limits = nullcontext()
        if cfg.threads and cfg.workers == 1:
            limits = threadpool_limits(cfg.threads, user_api="blas")
        with limits:
            blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
            scratch.fit(
                model, opt, x_train, train.labels, x_val, val.labels, epochs=cfg.epochs,
                batch_size=cfg.batch_size, l1=cfg.l1, l2=cfg.l2,
                label_smoothing=cfg.label_smoothing, lr_schedule=schedule.lr,
                seed=cfg.seed, on_epoch=on_epoch, progress=cfg.progress,
                start_epoch=start_epoch, pixel_norm=(train.mean, train.std),
                workers=cfg.workers, log_every=cfg.log_every, on_log=on_log)
        if last[0]:
            run.end_training(model, self.model_args(model), last[0])
        return {"parameters": model.num_params(), "hardware": {
            "device": "cpu", "workers": cfg.workers,
            "threads": 1 if cfg.workers == 2 else max((i["num_threads"] for i in blas), default=1),
            "blas": ", ".join(f"{i.get('internal_api')} {i.get('version')}" for i in blas),
            "numpy": np.__version__}}


ENGINE = NumpyEngine()
