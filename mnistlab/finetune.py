"""Fine-tuning: a trained checkpoint, a new head for the target classes, a choice of what
trains, and the one training loop of train.py (through its ``Hooks``).

    mnistlab finetune --from runs/cnn-0-4 --dataset mnist:5-9 --mode partial:1 --epochs 3

Modes (what trains; every other weight has ``requires_grad=False`` and stays bit-identical):

    full        every weight; ``--backbone-lr-scale 0.1`` gives the pretrained weights a tenth
                of the head's learning rate (discriminative learning rates)
    head        the new head only: a linear probe of the frozen features
    partial:K   the last K blocks of ``model.blocks()`` (counting blocks with weights) + the head
    lora        low-rank adapters (Hugging Face PEFT, ``pip install 'mnistlab[lora]'``) on the
                backbone's Linear/Conv2d layers, + the head; ``--merge`` also writes
                ``checkpoints/merged``: a plain registry model with the adapters folded in

``--unfreeze-every N`` (full, partial) is gradual unfreezing: the first N epochs train the
head only, then one more block, from the top down, joins every N epochs. Batch norm in frozen
blocks runs in eval mode, so its running statistics do not drift either.

The result is a normal run directory (eval, predict, serve and report work on it). Its
config.json and checkpoints record ``parent`` (the source checkpoint), ``finetune`` (mode,
parameter counts) and, for LoRA, ``adapter`` (what checkpoint.py needs to rebuild the model).
Fine-tuning runs cannot be continued with ``train --resume`` (the freezing is not replayed).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .errors import CheckpointError, ConfigError
from .training import Hooks

if TYPE_CHECKING:  # torch is imported lazily, when a model is prepared
    import torch
    from torch import nn

MODES = "full | head | partial:K | lora"


# ------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class FinetuneConfig:
    source: str  # run directory or checkpoint of the pretrained model
    mode: str = "full"  # full | head | partial:K | lora
    backbone_lr_scale: float = 1.0  # lr multiplier of the pretrained weights (the head gets 1)
    unfreeze_every: int = 0  # gradual unfreezing: epochs between unfreezing blocks (0: off)
    lora_rank: int = 8  # adapter rank r
    lora_alpha: float = 16.0  # the adapter update is (alpha / r) * B @ A
    lora_dropout: float = 0.0  # dropout on the adapters' input (training only)
    lora_targets: tuple[str, ...] = ()  # module-name suffixes, e.g. (qkv, fc1); (): every
    # Linear/Conv2d layer of the backbone
    merge: bool = False  # lora: also write checkpoints/merged, adapters folded into the weights

    def __post_init__(self) -> None:
        kind, _ = parse_mode(self.mode)
        if self.backbone_lr_scale <= 0:
            raise ConfigError(f"backbone_lr_scale: must be > 0, got {self.backbone_lr_scale}")
        if kind in ("head", "lora") and self.backbone_lr_scale != 1.0:
            raise ConfigError(f"backbone_lr_scale: no pretrained weight trains in mode {kind}")
        if self.unfreeze_every < 0:
            raise ConfigError(f"unfreeze_every: must be >= 0, got {self.unfreeze_every}")
        if kind in ("head", "lora") and self.unfreeze_every:
            raise ConfigError(f"unfreeze_every: gradual unfreezing needs mode full or "
                              f"partial:K, not {kind}")
        if self.lora_rank < 1 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ConfigError("lora: need rank >= 1, alpha > 0 and 0 <= dropout < 1, got "
                              f"{self.lora_rank}, {self.lora_alpha}, {self.lora_dropout}")
        if self.merge and kind != "lora":
            raise ConfigError("merge: only mode lora has adapters to merge")


def parse_mode(mode: str) -> tuple[str, int]:
    """'full' -> ('full', 0); 'partial:2' -> ('partial', 2)."""
    kind, colon, k = mode.partition(":")
    if kind in ("full", "head", "lora") and not colon:
        return kind, 0
    if kind == "partial" and k.isdigit() and int(k) >= 1:
        return kind, int(k)
    raise ConfigError(f"mode: expected {MODES} (K >= 1), got {mode!r}")


def write_merged(run_or_checkpoint: str | Path, which: str = "best") -> Path:
    """Write ``merged`` next to a LoRA checkpoint: a plain checkpoint that loads without PEFT."""
    from .models.adapters import merge_adapter

    ck = load_checkpoint(run_or_checkpoint, which=which)
    if not ck.meta.get("adapter"):
        raise CheckpointError(f"{ck.path}: has no adapters to merge")
    plain = merge_adapter(ck.model, ck.meta)
    meta = {k: v for k, v in ck.meta.items()
            if k not in ("adapter", "weights", "train_state", "train_state_file")}
    meta["finetune"] = {**meta.get("finetune", {}), "merged_from": ck.path.name}
    return save_checkpoint(ck.path.with_name("merged"), plain, meta)


# ------------------------------------------------------------------------------ preparation


@dataclass
class Prepared:
    """Everything train() needs for a fine-tuning run."""

    model: nn.Module  # parent weights, new head, freezing (and adapters) applied
    cfg: TrainConfig  # model and model_args are the parent's
    hooks: Hooks
    parent: Checkpoint
    trainable: int  # parameters the mode trains (after any gradual unfreezing)
    total: int


def load_parent(source: str | Path, expect_model: str | None = None) -> Checkpoint:
    """The pretrained checkpoint, refused with a CheckpointError if it cannot be fine-tuned."""
    from .models import Classifier

    ck = load_checkpoint(source)  # unknown models and weights that do not fit are refused here
    if ck.engine != "torch":
        raise CheckpointError(f"{ck.path}: a {ck.engine}-engine checkpoint cannot be fine-tuned; "
                              "fine-tuning needs a torch model from the registry")
    if expect_model and expect_model != ck.meta["model"]:
        raise CheckpointError(f"{ck.path}: holds model {ck.meta['model']!r}, but --model "
                              f"{expect_model!r} was asked for")
    if ck.meta.get("adapter"):  # a LoRA-tuned parent: continue from its merged weights
        from .models.adapters import merge_adapter

        ck = Checkpoint(merge_adapter(ck.model, ck.meta), ck.meta, ck.path)
    if not isinstance(ck.model, Classifier):
        raise CheckpointError(f"{ck.path}: model {ck.meta['model']!r} has no features/head "
                              "interface (models.Classifier) to fine-tune")
    return ck


def _batchnorms(module: nn.Module) -> list[nn.Module]:
    from torch import nn

    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def prepare(ft: FinetuneConfig, cfg: TrainConfig, *, expect_model: str | None = None,
            log: Callable[[str], None] = print) -> Prepared:
    """Load the parent, give it a head for ``cfg.dataset``'s classes and set what trains."""
    import torch

    from . import data as data_mod
    from .models import count_parameters
    from .models.adapters import attach_adapter, lora_target_names

    parent = load_parent(ft.source, expect_model)
    pmeta = parent.meta
    model = parent.model
    kind, k = parse_mode(ft.mode)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    default_name = f"{pmeta['model']}-ft-{kind}{k or ''}-{data_mod.slug(cfg.dataset)}-{stamp}"
    cfg = cfg.replace(
        model=pmeta["model"],
        model_args={a: v for a, v in pmeta["model_args"].items() if a != "num_classes"},
        name=cfg.name or default_name,
    )

    blocks = [b for b in model.blocks() if any(True for _ in b.parameters())]
    if kind == "partial" and k > len(blocks):
        raise ConfigError(f"mode: partial:{k} asks for more blocks than {pmeta['model']!r} has "
                          f"({len(blocks)} with weights); use full, or K <= {len(blocks)}")

    # --- a new head for the target's classes (seeded, like the adapters below)
    torch.manual_seed(cfg.seed)
    target = data_mod.load(cfg.dataset, "val", data_dir=cfg.data_dir or None, seed=cfg.seed,
                           val_size=None if cfg.val_size < 0 else cfg.val_size)
    model.reset_head(len(target.classes))

    # --- what trains: stages of parameters, top (next to the head) first
    n_blocks = {"full": len(blocks), "partial": k}.get(kind, 0)
    stages = [list(b.parameters()) for b in reversed(blocks[len(blocks) - n_blocks:])]
    if kind == "full":  # any weight outside blocks() and the head joins with the last stage
        seen = {id(p) for s in stages for p in s} | {id(p) for p in model.head.parameters()}
        rest = [p for p in model.parameters() if id(p) not in seen]
        stages = stages[:-1] + [stages[-1] + rest] if stages else [rest]
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    for stage in stages:
        for p in stage:
            p.requires_grad_(True)

    adapter = None
    if kind == "lora":
        adapter = {"type": "lora", "rank": ft.lora_rank, "alpha": ft.lora_alpha,
                   "dropout": ft.lora_dropout,
                   "target_modules": lora_target_names(model, ft.lora_targets)}
        attach_adapter(model, adapter)  # freezes every non-adapter weight ...
        model.head.requires_grad_(True)  # ... and the new head trains

    total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    gradual = ft.unfreeze_every > 0
    log(f"fine-tuning {pmeta['model']} from {parent.path} on {cfg.dataset} "
        f"({len(target.classes)} classes), mode {ft.mode}: {trainable:,} trainable / "
        f"{total:,} parameters ({100 * trainable / total:.2f}%)"
        + (f"; gradual: head first, one more block every {ft.unfreeze_every} epochs"
           if gradual else ""))

    # --- discriminative learning rates: every pretrained weight gets backbone_lr_scale
    lr_scales = None
    if ft.backbone_lr_scale != 1.0:
        lr_scales = {n: ft.backbone_lr_scale for n, _ in model.named_parameters()
                     if not n.startswith("head.")}

    # --- gradual unfreezing: only the head trains until its stage comes
    if gradual:
        for stage in stages:
            for p in stage:
                p.requires_grad_(False)
    unfrozen = [0 if gradual else len(stages)]  # stages trainable so far

    def on_epoch_start(epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if gradual:
            n = min(len(stages), epoch // ft.unfreeze_every)
            for stage in stages[unfrozen[0]:n]:
                for p in stage:
                    p.requires_grad_(True)
                optimizer.add_param_group({"params": stage, "lr_scale": ft.backbone_lr_scale,
                                           "lr": cfg.lr * ft.backbone_lr_scale})
            if n > unfrozen[0]:
                log(f"gradual unfreezing: {n} of {len(stages)} blocks train from epoch "
                    f"{epoch + 1}")
            unfrozen[0] = n
        # the loop has just called model.train(); frozen batch norm keeps its statistics
        frozen = blocks if kind == "lora" else blocks[: len(blocks) - unfrozen[0]]
        for block in frozen:
            for bn in _batchnorms(block):
                bn.eval()

    meta: dict[str, Any] = {
        "parent": {
            "path": str(parent.path.resolve()),
            "model": pmeta["model"],
            "dataset": pmeta.get("dataset"),
            "classes": pmeta["classes"],
            "weights_sha256": pmeta["weights"]["sha256"],
            "metrics": pmeta.get("metrics"),
            "code_version": pmeta.get("code_version"),
        },
        "finetune": {**asdict(ft), "lora_targets": list(ft.lora_targets),
                     "blocks_trained": n_blocks, "blocks_total": len(blocks),
                     "trainable_params": trainable, "total_params": total},
    }
    if adapter:
        meta["adapter"] = adapter
    hooks = Hooks(model=model, lr_scales=lr_scales, on_epoch_start=on_epoch_start, meta=meta)
    return Prepared(model, cfg, hooks, parent, trainable, total)


def finetune(ft: FinetuneConfig, cfg: TrainConfig, *, expect_model: str | None = None,
             log: Callable[[str], None] = print) -> Path:
    """Fine-tune ``ft.source`` on ``cfg.dataset`` and return the run directory."""
    from .training import train

    prep = prepare(ft, cfg, expect_model=expect_model, log=log)
    run_dir = train(prep.cfg, hooks=prep.hooks, log=log)
    if ft.merge:
        path = write_merged(run_dir)
        log(f"merged checkpoint (adapters folded in; loads without PEFT): {path}")
    return run_dir
