"""Training configuration: one frozen dataclass, filled from a TOML recipe and CLI flags.

Precedence: dataclass defaults < recipe file (``--config``) < flags (``--lr 0.01`` or
``--set lr=0.01``). Every value is validated; a bad one raises ``ConfigError`` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adadelta")
SCHEDULES = ("constant", "step", "exponential", "cosine", "onecycle", "plateau")
EARLY_STOP = ("none", "val_acc", "val_loss")
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"  # also linked as ./recipes


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field."""


@dataclass(frozen=True)
class TrainConfig:
    # --- run
    name: str = ""  # run directory name under runs_dir ("" -> <model>-<dataset>-<time>)
    runs_dir: str = "runs"  # parent of run directories
    seed: int = 0  # seeds weights, split, shuffling and augmentation
    deterministic: bool = False  # bit-reproducible kernels (slower); needed for exact resume
    # --- data
    dataset: str = "mnist"  # mnist | fashion-mnist | mnist-5k | NAME:a-b class subsets
    data_dir: str = ""  # "" -> --data-dir / $MNISTLAB_DATA_DIR / ~/.cache/mnistlab
    val_size: int = -1  # validation images held out of train (-1: 5,000 or 10% for small sets)
    labels_per_class: int = 0  # >0: train on only this many labelled images per class
    augment: str = "none"  # none | affine | affine+elastic | full | handwriting (augment.py)
    # --- model
    model: str = "fast-cnn"  # a name from `mnistlab models`
    model_args: dict = field(default_factory=dict)  # keyword arguments of the model
    # --- optimization
    epochs: int = 1  # passes over the training split
    batch_size: int = 128  # images per step
    optimizer: str = "adam"  # sgd | adam | adamw | rmsprop | adadelta
    lr: float = 1e-3  # peak learning rate
    momentum: float = 0.9  # sgd and rmsprop
    nesterov: bool = False  # sgd only
    betas: tuple = (0.9, 0.999)  # adam / adamw
    weight_decay: float = 0.0  # decoupled decay: w <- w - lr*wd*w, outside the gradient
    l1: float = 0.0  # penalty l1 * sum|w| added to the loss (weights, not biases/norms)
    l2: float = 0.0  # penalty l2/2 * sum w^2 added to the loss (its gradient is l2*w)
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    grad_clip: float = 0.0  # max global gradient norm (0: off)
    # --- learning-rate schedule
    schedule: str = "constant"  # constant | step | exponential | cosine | onecycle | plateau
    warmup_epochs: float = 0.0  # linear warm-up from 0 (not with onecycle, which has its own)
    step_epochs: int = 1  # step: decay every this many epochs
    gamma: float = 0.7  # step / exponential: multiply the lr by this per step / epoch
    min_lr: float = 0.0  # cosine floor
    pct_start: float = 0.25  # onecycle: fraction of steps spent rising
    plateau_patience: int = 2  # plateau: epochs without val improvement before decaying
    plateau_factor: float = 0.5  # plateau: lr multiplier
    # --- early stopping (on the validation split, never the test split)
    early_stop: str = "none"  # none | val_acc | val_loss
    patience: int = 3  # epochs without improvement before stopping
    restore_best: bool = True  # end with the best validation weights
    # --- logging and checks
    log_every: int = 50  # steps between metrics.jsonl step records
    max_loss: float = 1e3  # stop if the training loss is NaN/inf or above this
    eval_test: bool = True  # evaluate best checkpoint on the test split at the end (report)
    tensorboard: bool = False  # also write TensorBoard logs under the run directory
    # --- hardware
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    threads: int = 0  # torch CPU threads (0: torch's default)
    workers: int = 1  # numpy-mlp only: 2 splits the first layer over two processes (Linux x86-64)
    amp: bool = False  # mixed precision (bfloat16 on CPU, float16 on CUDA)
    compile: bool = False  # torch.compile the model
    progress: bool = True  # progress bars (--quiet turns them off)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return from_dict({**self.to_dict(), **changes})


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{name}: {msg}")


def validate(c: TrainConfig) -> None:
    _check(c.epochs >= 1, "epochs", f"must be >= 1, got {c.epochs}")
    _check(c.batch_size >= 1, "batch_size", f"must be >= 1, got {c.batch_size}")
    _check(c.lr > 0, "lr", f"must be > 0, got {c.lr}")
    _check(c.optimizer in OPTIMIZERS, "optimizer", f"must be one of {OPTIMIZERS}, got {c.optimizer!r}")
    _check(c.schedule in SCHEDULES, "schedule", f"must be one of {SCHEDULES}, got {c.schedule!r}")
    _check(c.early_stop in EARLY_STOP, "early_stop", f"must be one of {EARLY_STOP}, got {c.early_stop!r}")
    for name in ("weight_decay", "l1", "l2", "grad_clip", "warmup_epochs", "min_lr"):
        _check(getattr(c, name) >= 0, name, f"must be >= 0, got {getattr(c, name)}")
    _check(0 <= c.label_smoothing < 1, "label_smoothing", f"must be in [0, 1), got {c.label_smoothing}")
    _check(0 < c.gamma <= 1, "gamma", f"must be in (0, 1], got {c.gamma}")
    _check(0 < c.pct_start < 1, "pct_start", f"must be in (0, 1), got {c.pct_start}")
    _check(0 <= c.momentum < 1, "momentum", f"must be in [0, 1), got {c.momentum}")
    _check(len(c.betas) == 2 and all(0 <= b < 1 for b in c.betas), "betas", f"need two values in [0, 1), got {c.betas}")
    _check(c.patience >= 1, "patience", f"must be >= 1, got {c.patience}")
    _check(c.step_epochs >= 1, "step_epochs", f"must be >= 1, got {c.step_epochs}")
    _check(c.val_size >= -1, "val_size", f"must be >= 0 (or -1 for the default), got {c.val_size}")
    _check(c.labels_per_class >= 0, "labels_per_class", f"must be >= 0, got {c.labels_per_class}")
    _check(c.log_every >= 1, "log_every", f"must be >= 1, got {c.log_every}")
    _check(c.threads >= 0, "threads", f"must be >= 0, got {c.threads}")
    _check(c.workers in (1, 2), "workers", f"must be 1 or 2, got {c.workers}")
    _check(c.workers == 1 or c.model == "numpy-mlp", "workers",
           "only the NumPy engine (model numpy-mlp) trains with worker processes")  # fmt: skip
    _check(not (c.nesterov and c.optimizer != "sgd"), "nesterov", "only applies to optimizer 'sgd'")
    _check(c.max_loss > 0, "max_loss", f"must be > 0, got {c.max_loss}")
    _check(isinstance(c.model_args, dict), "model_args", "must be a table/dict of model arguments")
    from .augment import PRESETS

    _check(c.augment in PRESETS, "augment", f"must be one of {tuple(PRESETS)}, got {c.augment!r}")
    from .models import list_models

    engines = list_models() + ["numpy-mlp"]
    _check(c.model in engines, "model", f"unknown model {c.model!r}; known: {', '.join(engines)}")


_FIELDS = {f.name: f for f in fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Convert a TOML/CLI value to the field's type (strings from flags are parsed)."""
    default = _FIELDS[name].default
    if default is dataclasses.MISSING:  # model_args
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"{name}: expected a JSON object, got {value!r}") from None
        return value
    kind = type(default)
    try:
        if kind is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if kind is tuple:
            if isinstance(value, str):
                value = [float(v) for v in value.strip("()[] ").split(",")]
            return tuple(float(v) for v in value)
        if kind is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, (int, str)) and not isinstance(value, bool):
            return int(value)
        if kind is str and isinstance(value, str):
            return value
        if isinstance(value, kind):
            return value
    except ValueError:
        pass
    raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}")


def from_dict(values: dict[str, Any]) -> TrainConfig:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown field; valid fields: {', '.join(_FIELDS)}")
    return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})


def find_recipe(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    candidate = RECIPES_DIR / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(q.stem for q in RECIPES_DIR.glob("*.toml"))) or "none"
    raise ConfigError(f"config: no recipe file or name {name_or_path!r} (recipes: {known})")


def load_recipe(name_or_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config values, [result] table) of a TOML recipe. The result table holds the figures
    measured with it, shown by `mnistlab recipes`; it is not configuration."""
    path = find_recipe(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {path} is not valid TOML ({e})") from None
    result = data.pop("result", {})
    data.pop("description", None)
    return data, result


def build_config(recipe: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    values: dict[str, Any] = {}
    if recipe:
        values.update(load_recipe(recipe)[0])
    values.update(overrides or {})
    return from_dict(values)


def list_recipes() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for path in sorted(RECIPES_DIR.glob("*.toml")):
        data = tomllib.loads(path.read_text())
        out.append((path.stem, data.get("description", ""), data.get("result", {})))
    return out
