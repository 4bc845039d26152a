"""``compress``: a trained run -> a new, pruned and/or quantized run directory.

    parent run --load--> prune (one-shot masks | structured narrowing | gradual schedule)
               --fine-tune (train.train with Hooks: model, after_step=masks, meta)-->
               quantize weights (per-channel integers) --> checkpoints/best.<sha>.mnc

The fine-tuning uses the parent's training split and settings (a tenth of its learning rate
unless told otherwise) and selects the best epoch on the validation split; a gradual schedule
keeps the last epoch instead, the first one at full sparsity. The result is an ordinary run
directory: its checkpoint loads through ``load_checkpoint`` like any other (eval, predict,
serve, finetune, export), its metadata names the parent (``parent``) and what was done
(``compression``), and report.md gains a section with accuracy against sparsity and the
sparsity of every layer (``report.d/compression.md``; data in ``compression.json``).
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import (
    Checkpoint,
    atomic_write_json,
    base_meta,
    load_checkpoint,
    plain_torch_problem,
    save_checkpoint,
)
from ..config import TrainConfig, build_config
from ..errors import ConfigError
from .prune import (
    SCOPES,
    GradualPruner,
    PruneError,
    apply_masks,
    check_amount,
    count_nonzero,
    magnitude_masks,
    sparsity_table,
    structured_prune,
)
from .quantize import FakeQuantModel, quantize_weights

SCHEDULES = ("oneshot", "gradual")
QUANTIZE = ("none", "int8")
DEFAULT_SWEEP = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)


class CompressError(ConfigError):
    """A compression request that cannot be carried out; the message names the setting."""


@dataclass(frozen=True)
class CompressConfig:
    source: str  # the parent: a run directory or checkpoint
    prune: float = 0.0  # fraction of weights (unstructured) or channels (structured) removed
    scope: str = "global"  # global: one ranking over all layers | layer: each layer alike
    structured: bool = False  # remove whole channels/neurons (a narrower model)
    schedule: str = "oneshot"  # oneshot | gradual (Zhu & Gupta 2017, over the fine-tuning)
    ramp: float = 0.5  # gradual: fraction of the fine-tuning steps over which sparsity rises
    prune_every: int = 0  # gradual: steps between mask updates (0: ~20 per epoch)
    quantize: str = "none"  # none | int8: integer weights, per output channel
    bits: int = 8  # integer levels 2**bits - 1 (int8 storage; < 8 only shrinks the file)
    qat: bool = False  # fine-tune with fake-quantized weights and inputs (needs --quantize)
    epochs: int = 1  # fine-tuning epochs after pruning (0: none)
    lr: float = 0.0  # fine-tuning peak learning rate (0: a tenth of the parent's)
    sweep: tuple[float, ...] = DEFAULT_SWEEP  # sparsities whose validation accuracy without
    # fine-tuning is reported (accuracy against sparsity); () for none
    name: str = ""  # run directory name ("" -> <parent>-pruned90-int8-<time>)
    runs_dir: str = ""  # parent of the new run ("" -> the parent run's own parent folder)
    train_overrides: dict[str, Any] = field(default_factory=dict)  # other fine-tuning settings

    def __post_init__(self) -> None:
        try:
            check_amount(self.prune)
            for s in self.sweep:
                check_amount(s, "sweep")
        except PruneError as e:
            raise CompressError(str(e)) from None
        _choice("scope", self.scope, SCOPES)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("quantize", self.quantize, QUANTIZE)
        if not 2 <= self.bits <= 8:
            raise CompressError(f"bits: must be in 2..8, got {self.bits}")
        if self.epochs < 0:
            raise CompressError(f"epochs: must be >= 0, got {self.epochs}")
        if self.lr < 0:
            raise CompressError(f"lr: must be > 0 (or 0 for a tenth of the parent's), got {self.lr}")
        if not 0 < self.ramp <= 1:
            raise CompressError(f"ramp: must be in (0, 1], got {self.ramp}")
        if self.prune == 0 and self.quantize == "none":
            raise CompressError("nothing to do: give --prune FRACTION and/or --quantize int8")
        if self.schedule == "gradual" and (self.prune == 0 or self.epochs == 0 or self.structured):
            raise CompressError("schedule: gradual pruning needs --prune > 0, --epochs >= 1 and "
                                "unstructured pruning")
        if self.qat and (self.quantize == "none" or self.epochs == 0):
            raise CompressError("qat: quantization-aware training needs --quantize int8 and "
                                "--epochs >= 1")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise CompressError(f"{name}: must be one of {', '.join(choices)}, got {value!r}")


# ------------------------------------------------------------------------------ helpers


def load_parent(source: str | Path) -> Checkpoint:
    """The parent checkpoint, refused if it cannot be compressed."""
    ck = load_checkpoint(source)
    if problem := plain_torch_problem(ck, source, "compress"):
        raise CompressError(problem)
    return ck


def parent_config(ck: Checkpoint) -> TrainConfig:
    """The parent's training settings (its run's config.json), model as in its checkpoint."""
    from ..run import saved_config

    run_dir = ck.path.parent.parent if ck.path.parent.name == "checkpoints" else None
    model = {"model": ck.meta["model"], "model_args": ck.meta["model_args"]}
    if run_dir is not None and (run_dir / "config.json").is_file():
        return saved_config(run_dir).replace(**model)
    split = ck.meta.get("split", {})
    return build_config(None, {**model, "dataset": ck.meta["dataset"],
                               "seed": ck.meta.get("seed", 0),
                               "val_size": split.get("val_size", -1)})


def file_bytes(ck: Checkpoint) -> int:
    return ck.path.with_name(ck.meta["weights"]["file"]).stat().st_size


def _evaluate(model: torch.nn.Module, ds: Any, device: torch.device) -> float:
    from ..engines.torch_engine import evaluate_loader
    from ..loader import BatchLoader

    loader = BatchLoader(ds.images, ds.labels, batch_size=1000, mean=ds.mean, std=ds.std,
                         shuffle=False, device=device)
    return evaluate_loader(model, loader)["acc"]


def _describe(c: CompressConfig) -> str:
    parts = []
    if c.prune:
        kind = "structured" if c.structured else "unstructured"
        parts.append(f"{kind} {c.scope} {c.schedule} pruning to {c.prune:.0%}")
    if c.quantize != "none":
        parts.append(f"int{c.bits} weights" + (" (QAT)" if c.qat else ""))
    if c.epochs:
        parts.append(f"{c.epochs} fine-tuning epoch(s)")
    return ", ".join(parts)


def _default_name(c: CompressConfig, parent: Checkpoint) -> str:
    base = parent.path.parent.parent.name if parent.path.parent.name == "checkpoints" \
        else parent.meta["model"]
    tag = ""
    if c.prune:
        tag += f"-{'s' if c.structured else ''}pruned{round(100 * c.prune)}"
    if c.quantize != "none":
        tag += f"-int{c.bits}" + ("qat" if c.qat else "")
    return f"{base}{tag}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


# ------------------------------------------------------------------------------ compress


def compress(c: CompressConfig, *, log: Callable[[str], None] = print) -> Path:
    """Prune, fine-tune and quantize ``c.source`` into a new run directory (returned)."""
    from ..engines import get_engine
    from ..engines.torch_engine import pick_device
    from ..report import write_report
    from ..run import RunDir
    from ..training import Hooks, load_splits, train

    parent = load_parent(c.source)
    pcfg = parent_config(parent)
    lr = c.lr or pcfg.lr / 10
    try:
        cfg = pcfg.replace(**{"epochs": max(c.epochs, 1), "lr": lr, "warmup_epochs": 0.0,
                              "early_stop": "none", "eval_test": False, "compile": False,
                              "labels_per_class": pcfg.labels_per_class,
                              **c.train_overrides})
    except ValueError as e:
        raise CompressError(str(e)) from None
    runs_dir = c.runs_dir or (str(parent.path.parent.parent.parent)
                              if parent.path.parent.name == "checkpoints" else "runs")
    name = c.name or _default_name(c, parent)
    run_dir = Path(runs_dir) / name
    if (run_dir / "checkpoints").exists():
        raise CompressError(f"name: {run_dir} already has checkpoints; choose another --name")
    cfg = cfg.replace(name=name, runs_dir=runs_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)

    train_ds, val_ds = load_splits(cfg)
    model = copy.deepcopy(parent.model).to(device)
    record: dict[str, Any] = {"settings": {**asdict(c), "sweep": list(c.sweep), "lr": lr},
                              "description": _describe(c)}
    record["parent_val_acc"] = _evaluate(model, val_ds, device)
    record["parent_weights_bytes"] = file_bytes(parent)
    record["parent_nonzero"] = count_nonzero(model)[0]
    log(f"compressing {parent.path} ({parent.meta['model']}, val acc "
        f"{record['parent_val_acc']:.4f}): {record['description']}")

    # --- accuracy against sparsity, before any fine-tuning (validation split)
    if c.prune and c.sweep:
        points = sorted(set(c.sweep) | {c.prune})
        record["sweep"] = [{"sparsity": s, "val_acc": _evaluate(
            _pruned_copy(model, s, c), val_ds, device)} for s in points]
        log("accuracy against sparsity (no fine-tuning, val): " + ", ".join(
            f"{p['sparsity']:.0%} {p['val_acc']:.4f}" for p in record["sweep"]))

    # --- prune
    after_step = None
    masks: dict[str, torch.Tensor] = {}
    pruner = None
    if c.prune and c.structured:
        try:
            model = structured_prune(model, c.prune, c.scope)
        except PruneError as e:
            raise CompressError(str(e)) from None
        cfg = cfg.replace(model_args=model.config)
    elif c.prune and c.schedule == "oneshot":
        masks = magnitude_masks(model, c.prune, c.scope)
        apply_masks(model, masks)
        after_step = lambda step, m: apply_masks(model, masks)  # noqa: E731  (zeros stay zero)
    elif c.prune:
        steps_per_epoch = -(-len(train_ds) // cfg.batch_size)
        ramp_steps = max(1, round(c.ramp * c.epochs * steps_per_epoch))
        every = c.prune_every or max(1, steps_per_epoch // 20)
        pruner = GradualPruner(model, c.prune, scope=c.scope, ramp_steps=ramp_steps, every=every)
        after_step = pruner
        # the best epoch could be one still ramping up; the result is the last epoch
        cfg = cfg.replace(restore_best=False)
    if c.prune and not pruner:
        record["pruned_val_acc"] = _evaluate(model, val_ds, device)
        log(f"pruned: val acc {record['pruned_val_acc']:.4f} before fine-tuning")

    # --- fine-tune (the training loop writes run_dir, config.json, metrics, checkpoints)
    meta = {"parent": {"path": str(parent.path.resolve()), "model": parent.meta["model"],
                       "dataset": parent.meta.get("dataset"),
                       "weights_sha256": parent.meta["weights"]["sha256"],
                       "metrics": parent.meta.get("metrics"),
                       "code_version": parent.meta.get("code_version")},
            "compression": {"description": record["description"], **record["settings"]}}
    if c.epochs:
        trained = FakeQuantModel(model, c.bits) if c.qat else model
        train(cfg, hooks=Hooks(model=trained, after_step=after_step, meta=meta), log=log)
        best = load_checkpoint(run_dir, device=str(device))
        model, ck_meta = best.model, best.meta
        if pruner is not None:
            record["gradual"] = {"mask_updates": [list(h) for h in pruner.history],
                                 "epochs": _epoch_sparsity(run_dir, pruner)}
    else:  # no training: the run scaffold still writes config.json and run.json
        scaffold = RunDir.prepare(cfg, get_engine("torch"), classes=parent.classes,
                                  normalization=parent.meta["normalization"], extra=meta)
        scaffold.start(resumed=False)
        ck_meta = {**parent.meta, **meta, "epoch": parent.meta.get("epoch"),
                   "step": parent.meta.get("step")}
        ck_meta.pop("train_state", None)
        ck_meta.pop("train_state_file", None)

    # --- quantize and store compactly (the checkpoint every consumer loads)
    qtensors = quantize_weights(model, c.bits) if c.quantize != "none" else {}
    val_acc = _evaluate(model, val_ds, device)
    record["val_acc"] = val_acc
    record["layers"] = sparsity_table(model)
    nz, total = count_nonzero(model)
    record["nonzero"], record["parameters"] = nz, total
    meta_out = base_meta(**{k: v for k, v in ck_meta.items()
                            if k not in ("format", "format_version", "created", "weights",
                                         "versions", "code_version")})
    meta_out["metrics"] = {**(ck_meta.get("metrics") or {}), "val_acc": val_acc}
    meta_out["model_args"] = model.config
    save_checkpoint(run_dir / "checkpoints" / "best", model, meta_out, compact=qtensors)
    out = load_checkpoint(run_dir)
    record["weights_bytes"] = file_bytes(out)
    record["compression_ratio"] = record["parent_weights_bytes"] / record["weights_bytes"]
    log(f"result: val acc {val_acc:.4f} (parent {record['parent_val_acc']:.4f}), "
        f"{nz:,} of {total:,} parameters non-zero, {record['weights_bytes']:,} bytes "
        f"({record['compression_ratio']:.1f}x smaller than the parent's "
        f"{record['parent_weights_bytes']:,})")
    atomic_write_json(run_dir / "compression.json", record)
    write_section(run_dir, record, parent)
    if not c.epochs:
        scaffold.finish()
    write_report(run_dir, eval_test=pcfg.eval_test, log=log)
    return run_dir


def _pruned_copy(model: torch.nn.Module, s: float, c: CompressConfig) -> torch.nn.Module:
    if c.structured:
        return structured_prune(model, s, c.scope)
    m = copy.deepcopy(model)
    apply_masks(m, magnitude_masks(m, s, c.scope))
    return m


def _epoch_sparsity(run_dir: Path, pruner: GradualPruner) -> list[dict]:
    """(epoch, sparsity at its end, val acc) from metrics.jsonl and the mask updates."""
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("type") == "epoch":
            s = max((sp for st, sp in pruner.history if st <= r["step"]), default=0.0)
            rows.append({"epoch": r["epoch"], "sparsity": s, "val_acc": r["val_acc"]})
    return rows


# ------------------------------------------------------------------------------ report


def write_section(run_dir: Path, r: dict, parent: Checkpoint) -> Path:
    """report.d/compression.md (included in report.md) and plots/sparsity.png."""
    lines = ["## Compression", "",
             f"- parent: `{parent.path}` ({parent.meta['model']}, val acc "
             f"{100 * r['parent_val_acc']:.2f}%)",
             f"- done: {r['description']}",
             f"- result: val acc {100 * r['val_acc']:.2f}% "
             f"({100 * (r['val_acc'] - r['parent_val_acc']):+.2f} points); "
             f"{r['nonzero']:,} of {r['parameters']:,} parameters non-zero "
             f"(parent {r['parent_nonzero']:,})",
             f"- weights file: {r['weights_bytes']:,} bytes, {r['compression_ratio']:.1f}x "
             f"smaller than the parent's {r['parent_weights_bytes']:,} bytes", ""]
    if r.get("sweep"):
        lines += ["### Accuracy against sparsity", "",
                  "Validation accuracy right after magnitude pruning, before fine-tuning "
                  f"(parent {100 * r['parent_val_acc']:.2f}%):", "",
                  "| sparsity | val accuracy |", "|---|---|"]
        lines += [f"| {p['sparsity']:.0%} | {100 * p['val_acc']:.2f}% |" for p in r["sweep"]]
        lines += ["", f"After fine-tuning at {r['settings']['prune']:.0%}: "
                      f"{100 * r['val_acc']:.2f}%.", "", "![accuracy against sparsity]"
                      "(plots/sparsity.png)", ""]
        _plot_sweep(r, run_dir / "plots" / "sparsity.png")
    if r.get("gradual"):
        lines += ["### Gradual schedule", "", "| epoch | sparsity at its end | val accuracy |",
                  "|---|---|---|"]
        lines += [f"| {e['epoch']} | {e['sparsity']:.1%} | {100 * e['val_acc']:.2f}% |"
                  for e in r["gradual"]["epochs"]]
        lines.append("")
    lines += ["### Per-layer sparsity", "", "| layer | shape | weights | non-zero | sparsity |",
              "|---|---|---|---|---|"]
    lines += [f"| {x['layer']} | {'x'.join(map(str, x['shape']))} | {x['weights']:,} | "
              f"{x['nonzero']:,} | {100 * x['sparsity']:.1f}% |" for x in r["layers"]]
    path = run_dir / "report.d" / "compression.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _plot_sweep(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    s = [p["sparsity"] for p in r["sweep"]]
    ax.plot([0] + s, [r["parent_val_acc"]] + [p["val_acc"] for p in r["sweep"]], "o-",
            label="pruned, no fine-tuning")
    ax.plot([r["settings"]["prune"]], [r["val_acc"]], "r*", ms=12, label="this run")
    ax.set(xlabel="sparsity (fraction of weights removed)", ylabel="validation accuracy",
           title="accuracy against sparsity")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

