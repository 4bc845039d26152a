"""The torch engine: registry models (models/), safetensors weights, and the training loop.

The loop is one visible loop: per step, the schedule sets the rate, the forward pass and
loss (cross-entropy, or a hook's loss), penalties, backward, clipping, decoupled decay,
the optimizer step; per epoch, validation and the shared policy of run.py (best/last
checkpoints, early stopping). Data stay on the device as uint8 (loader.py) and are
normalized and augmented as whole batches.
"""

from __future__ import annotations

import os
import random
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import Augment, augment_preset
from ..config import TrainConfig
from ..distributed import Context, env_context
from ..errors import ConfigError
from ..loader import BatchLoader, epoch_seed
from ..models import count_parameters, create_model, list_models
from ..models import registry_docs as _docs
from ..optim import LRSchedule, build_optimizer, decoupled_decay, param_groups, penalty
from . import torch_ddp

MAX_PARAMETERS = 200_000_000  # a checkpoint describing a bigger model is refused unbuilt


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"device: unknown device {name!r}; use auto, cpu, cuda, cuda:N "
                              "or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} requested but CUDA is not available")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"device: {name!r}: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("device: 'mps' requested but Apple MPS is not available")
        if device.type not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"device: {name!r} is not supported; use auto, cpu, cuda or mps")
        return device
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


class TorchEngine:
    name = "torch"
    weights_suffix = ".safetensors"

    # --- models and weights

    def models(self) -> dict[str, str]:
        return {name: _docs()[name] for name in list_models()}

    def check(self, cfg: TrainConfig, hooks: Any = None) -> None:
        if cfg.workers != 1:
            raise ConfigError("workers: only the NumPy engine (model numpy-mlp) trains with "
                              "worker processes; torch uses --threads (and --nproc)")
        device = pick_device(cfg.device)
        augment_preset(cfg.augment)
        ctx = env_context()
        if ctx is not None and ctx.torchrun and cfg.nproc > 1:
            raise ConfigError(f"nproc: this process is already rank {ctx.rank} of "
                              f"{ctx.world_size} (torchrun starts the processes: "
                              "--nproc-per-node); leave --nproc at 1")
        world = ctx.world_size if ctx is not None else cfg.nproc
        if world == 1:
            return
        if cfg.batch_size % world:
            raise ConfigError(f"batch_size: {cfg.batch_size} does not split evenly over {world} "
                              f"processes (each takes batch_size/{world}); use a multiple of "
                              f"{world}")
        if hooks is not None and (hooks.model is not None or any(
                getattr(hooks, h) is not None for h in ("lr_scales", "on_epoch_start", "loss",
                                                        "after_step", "on_epoch_end"))):
            raise ConfigError("nproc: derived runs (fine-tuning, pruning, distillation) and "
                              "tuning trials train in one process each")
        if device.type == "mps":
            raise ConfigError("nproc: data-parallel training runs on CPUs (gloo) or CUDA GPUs "
                              "(NCCL), not on MPS")
        if device.type == "cuda":
            if cfg.device not in ("auto", "cuda"):
                raise ConfigError(f"device: with several processes each rank takes its own GPU "
                                  f"(cuda:LOCAL_RANK); use --device cuda, not {cfg.device!r}")
            local = ctx.local_world_size if ctx is not None else cfg.nproc
            if local > torch.cuda.device_count():
                raise ConfigError(f"nproc: {local} processes on this machine but only "
                                  f"{torch.cuda.device_count()} CUDA device(s)")

    def build(self, model: str, model_args: dict[str, Any], num_classes: int, *,
              seed: int = 0) -> torch.nn.Module:
        if "num_classes" in model_args and model_args["num_classes"] != num_classes:
            raise ConfigError(f"model_args: num_classes is {model_args['num_classes']} but the "
                              f"dataset has {num_classes} classes")
        args = {**model_args, "num_classes": num_classes}
        self._bounded(model, args, "model_args")
        torch.manual_seed(seed)
        try:
            return create_model(model, **args)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ConfigError(f"model_args: {str(e).splitlines()[0]}") from None

    def _bounded(self, model: str, args: dict[str, Any], what: str) -> None:
        """Build on the meta device (no memory) to check the arguments and the size."""
        try:
            with torch.device("meta"):
                n = count_parameters(create_model(model, **args))
        except (TypeError, ValueError, RuntimeError, OverflowError) as e:
            raise ConfigError(f"{what}: {str(e).splitlines()[0]}") from None
        if n > MAX_PARAMETERS:
            raise ConfigError(f"{what}: {model} with {args} has {n:,} parameters, more than "
                              f"mnistlab builds ({MAX_PARAMETERS:,})")

    def from_meta(self, meta: dict[str, Any]) -> torch.nn.Module:
        if meta["model"] not in list_models():
            raise ConfigError(f"unknown model {meta['model']!r}; known: "
                              f"{', '.join(list_models())}")
        self._bounded(meta["model"], meta["model_args"], "model_args")
        model = create_model(meta["model"], **meta["model_args"])
        if meta.get("adapter"):  # low-rank adapters from `mnistlab finetune --mode lora`
            from ..models.adapters import attach_adapter

            try:
                attach_adapter(model, meta["adapter"])
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"cannot rebuild its adapters: {e}") from None
        return model

    def model_args(self, model: torch.nn.Module) -> dict[str, Any]:
        return dict(model.config)

    def weights_bytes(self, model: torch.nn.Module) -> bytes:
        from safetensors.torch import save

        return save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})

    def load_weights(self, model: torch.nn.Module, blob: bytes) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load

        try:
            state = load(blob)
        except SafetensorError as e:
            raise ValueError(f"not a safetensors file ({e})") from None
        model.load_state_dict(state)

    def set_threads(self, n: int) -> None:
        if n > 0:
            torch.set_num_threads(n)

    def to_device(self, model: torch.nn.Module, device: str) -> None:
        model.to(pick_device(device)).eval()

    def logits(self, model: torch.nn.Module, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        device = next(model.parameters()).device
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(device)
                out.append(model(xb).float().cpu().numpy())
        return np.concatenate(out)

    def num_parameters(self, model: torch.nn.Module, trainable_only: bool = False) -> int:
        return count_parameters(model, trainable_only)

    def summary(self, model: torch.nn.Module) -> dict[str, Any]:
        from ..summary import summarize

        return summarize(model)

    # --- training

    def fit(self, cfg: TrainConfig, run: Any, model: torch.nn.Module, train: Any, val: Any, *,
            hooks: Any, state: dict[str, Any] | None, log: Any) -> dict[str, Any]:
        # process-wide settings for this run only: restored afterwards
        threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        ctx = env_context()  # this process's rank in a data-parallel run, or None
        try:
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            elif ctx is not None:  # the ranks on this machine share its cores
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.local_world_size))
            if hooks.model is not None and state is None:
                seed_everything(cfg.seed, cfg.deterministic)  # build() seeded the others
            elif cfg.deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
                torch.backends.cudnn.benchmark = False
            device = _device(cfg, ctx)
            group = torch_ddp.process_group(ctx, device) if ctx is not None else nullcontext()
            with group:
                return self._fit(cfg, run, model, train, val, hooks=hooks, state=state, log=log,
                                 device=device, ctx=ctx)
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic, warn_only=True)

    def _fit(self, cfg: TrainConfig, run: Any, model: torch.nn.Module, train: Any, val: Any, *,
             hooks: Any, state: dict[str, Any] | None, log: Any, device: torch.device,
             ctx: Context | None) -> dict[str, Any]:
        world = ctx.world_size if ctx is not None else 1
        amp_dtype = None
        if cfg.amp:
            amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

        # --- data: the whole split lives on the device as uint8; batches normalized there.
        # With several ranks each takes its rows of every batch (loader.shard) and of the
        # validation split; the metrics are summed over the ranks (torch_ddp.all_sum)
        augment = None
        if cfg.augment != "none":
            augment = Augment(augment_preset(cfg.augment), seed=cfg.seed)
        images, labels, styled = train.images, train.labels, None
        if cfg.rendered != "none":  # the training digits again, as files read back
            images, labels, styled = _with_renders(cfg, train, log, primary=ctx is None or
                                                   ctx.primary)
        train_loader = BatchLoader(images, labels, batch_size=cfg.batch_size // world,
                                   mean=train.mean, std=train.std, shuffle=True, seed=cfg.seed,
                                   device=device, augment=augment, fraction=cfg.epoch_fraction,
                                   styled=styled)
        val_x, val_y = val.images, val.labels
        if ctx is not None:
            train_loader.shard(ctx.rank, world)
            val_x, val_y = val_x[ctx.rank :: world], val_y[ctx.rank :: world]
        val_loader = BatchLoader(val_x, val_y, batch_size=1000, mean=train.mean,
                                 std=train.std, shuffle=False, device=device)

        # --- model and optimizer (under DDP: batch norm over the global batch, gradients
        # averaged over the ranks; ``model`` stays the plain module that checkpoints save)
        model.to(device)
        if ctx is not None:
            model = torch_ddp.sync_batchnorm(model, device)
        optimizer = build_optimizer(cfg, param_groups(model, hooks.lr_scales))
        schedule = LRSchedule(cfg, len(train_loader))
        scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp and device.type == "cuda")
        net = torch_ddp.wrap(model, device) if ctx is not None else model
        step_fn = torch.compile(net) if cfg.compile else net
        start_epoch, step = 0, 0
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            torch.set_rng_state(state["torch_rng"])
            if augment is not None:
                augment.load_state_dict(state["augment"])
            start_epoch, step = run.restore(state, log)

        n_total, n_train = count_parameters(model), count_parameters(model, trainable_only=True)
        log(f"run {run.path}  model {cfg.model} ({n_train:,} trainable / {n_total:,} "
            f"parameters)  data {cfg.dataset} train {len(train):,}"
            + (f" + {len(labels) - len(train):,} rendered" if styled is not None else "")
            + f" val {len(val):,}  "
            f"device {device}" + (f"  {world} processes ({torch_ddp.backend_for(device)}), "
                                  f"{cfg.batch_size // world} images each per step"
                                  if ctx is not None else ""))

        def totals(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int
                   ) -> tuple[float, float, int]:
            """(mean loss, accuracy, images) so far this epoch, over all ranks."""
            if ctx is None:
                return loss_sum.item() / seen, correct.item() / seen, seen
            loss, right, n = torch_ddp.all_sum([loss_sum, correct, seen], device)
            return loss / n, right / n, int(n)

        def train_state() -> dict[str, Any]:
            return {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "augment": augment.state_dict() if augment else None}

        # --- the loop
        from tqdm.auto import tqdm

        rec: dict[str, Any] = {}
        smoothing = cfg.label_smoothing > 0 and hooks.loss is None
        for epoch in range(start_epoch, cfg.epochs):
            net.train()
            if ctx is not None:  # each rank its own dropout masks, replayable on resume
                torch.manual_seed(epoch_seed(cfg.seed, epoch * 65536 + ctx.rank))
            if hooks.on_epoch_start is not None:  # after train(): it may put frozen BN in eval
                hooks.on_epoch_start(epoch, model, optimizer)
            train_loader.epoch = epoch  # the permutation depends only on (seed, epoch)
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=not cfg.progress or (ctx is not None and not ctx.primary),
                       unit="batch")
            loss_sum = torch.zeros((), device=device)  # cross-entropy, without smoothing
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
                        loss = F.cross_entropy(logits.float(), y,
                                               label_smoothing=cfg.label_smoothing)
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
                # bookkeeping without a device sync on every step; the logged loss is the
                # plain cross-entropy, comparable with validation's, also under smoothing
                with torch.no_grad():
                    ce = F.cross_entropy(logits.detach().float(), y) if smoothing else loss
                    loss_sum += ce.detach() * len(y)
                    correct += (logits.detach().argmax(1) == y).sum()
                seen += len(y)
                if step % cfg.log_every == 0 or i == len(train_loader) - 1:
                    t_loss, t_acc, t_seen = totals(loss_sum, correct, seen)
                    step_rec = run.log_step(
                        epoch=epoch + 1, step=step, loss=t_loss, acc=t_acc, lr=lr,
                        images_per_s=t_seen / (time.perf_counter() - t0))
                    bar.set_postfix(loss=f"{step_rec['loss']:.4f}", acc=f"{step_rec['acc']:.4f}",
                                    lr=f"{lr:.2e}", img_s=f"{step_rec['images_per_s']:,.0f}")
            seconds = time.perf_counter() - t0

            # --- end of epoch: validation, schedule, then the shared policy (run.py)
            val_m = evaluate_loader(model, val_loader, amp_dtype)
            if ctx is not None:
                n = len(val_y)
                v_loss, v_right, v_n = torch_ddp.all_sum(
                    [val_m["loss"] * n, val_m["acc"] * n, n], device)
                val_m = {"loss": v_loss / v_n, "acc": v_right / v_n}
            schedule.end_epoch(run.stopper.score(val_m))
            rec, stop = run.end_epoch(
                epoch=epoch, step=step, lr=lr, seconds=seconds, model=model,
                model_args=self.model_args(model), train_state=train_state, log=log,
                train={"loss": t_loss, "acc": t_acc, "images": t_seen}, val=val_m)
            if hooks.on_epoch_end is not None:
                hooks.on_epoch_end(epoch, rec)
            if stop:
                break
        if rec:
            run.end_training(model, self.model_args(model), rec)
        name = str(device)
        if device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(device)})"
        return {"parameters": n_total, "hardware": {
            "device": name, "threads": torch.get_num_threads(), "processes": world,
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "compiled": cfg.compile, "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype
            else "off", "torch": torch.__version__}}


def _with_renders(cfg: TrainConfig, train: Any, log: Any, *, primary: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The training split followed by its digits rendered in ``cfg.rendered`` and
    preprocessed as predict does (cached; see rendered.py), and which rows are renderings."""
    from tqdm.auto import tqdm

    from ..rendered import cached_renders

    t0 = time.perf_counter()
    n = len(train.images)
    with tqdm(total=n, desc=f"rendering {cfg.rendered}", leave=False, unit="digit",
              disable=not cfg.progress or not primary) as bar:
        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        workers = cfg.threads or os.cpu_count() or 1
        images, source, cached = cached_renders(train.images, cfg.rendered,
                                                seed=cfg.seed, workers=workers,
                                                progress=progress)
    log(f"rendered {cfg.rendered}: {len(images):,} of {n:,} training digits "
        f"as files read back by predict's preprocessing"
        + (f" ({n - len(images):,} refused)" if len(images) < n else "")
        + (" (from the cache)" if cached else f" ({time.perf_counter() - t0:.0f} s)"))
    styled = np.zeros(n + len(images), bool)
    styled[n:] = True
    return (np.concatenate([train.images.reshape(-1, 28, 28), images]),
            np.concatenate([train.labels, train.labels[source]]), styled)


def _device(cfg: TrainConfig, ctx: Context | None) -> torch.device:
    """The configured device; under DDP on GPUs, this rank's own (cuda:LOCAL_RANK)."""
    device = pick_device(cfg.device)
    if ctx is not None and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device


ENGINE = TorchEngine()

__all__ = ["ENGINE", "TorchEngine", "pick_device", "seed_everything", "evaluate_loader"]
