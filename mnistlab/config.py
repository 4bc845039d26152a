"""Training configuration: one frozen dataclass, filled from a recipe and from flags.

Precedence: field defaults < recipe (``--config``: a TOML recipe, or a run's ``config.json``)
< flags (``--lr 0.01`` or ``--set lr=0.01``). Each field carries its help text, group,
choices and bounds in its metadata: the CLI builds its flags and ``--help`` from them, and
``validate`` checks them, so a new setting is one line here. Every value is checked; a bad
one raises ``ConfigError`` naming the field. This module is a leaf: it imports no torch
and nothing else of mnistlab but its errors, so ``mnistlab --help`` stays fast.

Which engine honours which field is the engines' business (``engines/``): a field an engine
does not implement is refused by it with a ConfigError, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adadelta")
SCHEDULES = ("constant", "step", "exponential", "cosine", "onecycle", "plateau")
EARLY_STOP = ("none", "val_acc", "val_loss")
AUGMENT_PRESETS = ("none", "affine", "affine+elastic", "full", "handwriting")  # == augment.PRESETS
RENDERED = ("none", "scans")  # == ("none", *rendered.STYLES)
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"  # also linked as ./recipes

__all__ = ["ConfigError", "TrainConfig", "build_config", "from_dict", "load_config_file",
           "list_recipes", "find_recipe", "to_toml", "check_value", "RESUMABLE"]


def _f(default: Any, help: str, *, group: str, choices: tuple | None = None,
       ge: float | None = None, gt: float | None = None, lt: float | None = None,
       le: float | None = None, resumable: bool = False) -> Any:
    """A config field: its default plus metadata (help, --help group, choices, bounds;
    ``resumable``: may change when a run is resumed, as it cannot change what the run is)."""
    meta = {"help": help, "group": group, "choices": choices, "ge": ge, "gt": gt, "lt": lt,
            "le": le, "resumable": resumable}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TrainConfig:
    # --- run
    name: str = _f("", "run directory name under runs_dir ('': <model>-<dataset>-<time>)",
                   group="run")
    runs_dir: str = _f("runs", "parent folder of run directories", group="run")
    seed: int = _f(0, "seeds the weights, validation split, shuffling and augmentation",
                   group="run", ge=0)
    deterministic: bool = _f(False, "bit-reproducible kernels (slower on GPUs)", group="run")
    # --- data
    dataset: str = _f("mnist", "mnist | fashion-mnist | mnist-5k | NAME:a-b class subsets "
                      "| a folder of your own data", group="data")
    data_dir: str = _f("", "where datasets are looked for and downloaded ('': --data-dir, "
                       "$MNISTLAB_DATA_DIR, then ~/.cache/mnistlab)", group="data")
    val_size: int = _f(-1, "validation images held out of train (-1: 5,000, or 10% of a "
                       "small set)", group="data", ge=-1)
    split_seed: int = _f(-1, "seeds which images are held out for validation (-1: --seed); "
                         "runs that share it share a validation split, e.g. the members of "
                         "an ensemble", group="data", ge=-1)
    labels_per_class: int = _f(0, "train on only this many labelled images per class (0: all)",
                               group="data", ge=0)
    augment: str = _f("none", "augmentation preset applied to training batches", group="data",
                      choices=AUGMENT_PRESETS)
    rendered: str = _f("none", "also train on every training digit drawn once as an image "
                       "file (scans: low-resolution scans, upscaled) and read back by "
                       "predict's preprocessing; the augmentation warps these but does not "
                       "restyle them (mnistlab/rendered.py)", group="data", choices=RENDERED)
    # --- model
    model: str = _f("fast-cnn", "a model name from `mnistlab models`", group="model")
    model_args: dict = _f({}, "the model's keyword arguments, as JSON (e.g. "
                          "'{\"hidden\": [256]}'; see `mnistlab models`)", group="model")
    # --- optimization
    epochs: int = _f(1, "passes over the training split", group="optimization", ge=1,
                     resumable=True)
    epoch_fraction: float = _f(1.0, "share of the training split each epoch trains on: the "
                               "head of that epoch's shuffled order, so a fresh random subset "
                               "every epoch (1: all of it)", group="optimization", gt=0, le=1)
    batch_size: int = _f(128, "images per step", group="optimization", ge=1)
    optimizer: str = _f("adam", "the optimizer", group="optimization", choices=OPTIMIZERS)
    lr: float = _f(1e-3, "peak learning rate", group="optimization", gt=0)
    momentum: float = _f(0.9, "momentum of sgd and rmsprop", group="optimization", ge=0, lt=1)
    nesterov: bool = _f(False, "Nesterov momentum (sgd only)", group="optimization")
    betas: tuple = _f((0.9, 0.999), "Adam/AdamW moment decays, two values in [0, 1)",
                      group="optimization")
    weight_decay: float = _f(0.0, "decoupled decay w <- w - lr*wd*w, outside the gradient",
                             group="optimization", ge=0)
    l1: float = _f(0.0, "penalty l1 * sum|w| added to the loss (weights, not biases/norms)",
                   group="optimization", ge=0)
    l2: float = _f(0.0, "penalty l2/2 * sum w^2 added to the loss (its gradient is l2*w)",
                   group="optimization", ge=0)
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing", group="optimization",
                                ge=0, lt=1)
    grad_clip: float = _f(0.0, "max global gradient norm (0: off)", group="optimization", ge=0)
    # --- learning-rate schedule
    schedule: str = _f("constant", "learning-rate schedule", group="schedule",
                       choices=SCHEDULES)
    warmup_epochs: float = _f(0.0, "linear warm-up from 0 over this many epochs (not with "
                              "onecycle, which has its own)", group="schedule", ge=0)
    step_epochs: int = _f(1, "step: decay every this many epochs", group="schedule", ge=1)
    gamma: float = _f(0.7, "step: lr multiplier per decay; exponential: per epoch (applied "
                      "smoothly, every step)", group="schedule", gt=0, le=1)
    min_lr: float = _f(0.0, "cosine: the floor the rate decays to", group="schedule", ge=0)
    pct_start: float = _f(0.25, "onecycle: fraction of steps spent rising", group="schedule",
                          gt=0, lt=1)
    plateau_patience: int = _f(2, "plateau: epochs without improvement before decaying",
                               group="schedule", ge=1)
    plateau_factor: float = _f(0.5, "plateau: lr multiplier", group="schedule", gt=0, lt=1)
    # --- early stopping (on the validation split, never the test split)
    early_stop: str = _f("none", "stop when this validation metric stops improving; it also "
                         "picks the best checkpoint", group="early stopping", choices=EARLY_STOP)
    patience: int = _f(3, "epochs without improvement before stopping",
                       group="early stopping", ge=1)
    restore_best: bool = _f(True, "end with the best validation weights (else the last)",
                            group="early stopping")
    # --- logging and checks
    log_every: int = _f(50, "steps between metrics.jsonl step records", group="logging", ge=1)
    max_loss: float = _f(1e3, "stop if the training loss is NaN/inf or above this",
                         group="logging", gt=0)
    eval_test: bool = _f(True, "evaluate the best checkpoint on the test split at the end",
                         group="logging", resumable=True)
    tensorboard: bool = _f(False, "also write TensorBoard logs under the run directory",
                           group="logging", resumable=True)
    # --- hardware
    device: str = _f("auto", "auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps",
                     group="hardware", resumable=True)
    threads: int = _f(0, "CPU threads (0: the library default)", group="hardware", ge=0,
                      resumable=True)
    workers: int = _f(1, "numpy-mlp only: 2 splits the first layer over two processes "
                      "(Linux x86-64)", group="hardware", choices=(1, 2))
    nproc: int = _f(1, "data-parallel training processes on this machine (torch engine, "
                    "DDP); batch_size is the global batch, split evenly; under torchrun "
                    "leave it at 1", group="hardware", ge=1, resumable=True)
    amp: bool = _f(False, "mixed precision (bfloat16 on CPU, float16 on CUDA)",
                   group="hardware")
    compile: bool = _f(False, "torch.compile the model", group="hardware")
    progress: bool = _f(True, "progress bars (--quiet turns them off)", group="hardware",
                        resumable=True)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def val_seed(self) -> int:
        """The seed of the validation split: ``split_seed``, or ``seed`` when it is -1."""
        return self.seed if self.split_seed < 0 else self.split_seed

    def replace(self, **changes: Any) -> TrainConfig:
        return from_dict({**self.to_dict(), **changes})


FIELDS = {f.name: f for f in fields(TrainConfig)}

# (field, when it applies, where) for settings that act only together with another one
_APPLIES = (
    ("momentum", lambda c: c.optimizer in ("sgd", "rmsprop"), "to optimizers sgd and rmsprop"),
    ("nesterov", lambda c: c.optimizer == "sgd" and c.momentum > 0,
     "to optimizer sgd with momentum > 0"),
    ("betas", lambda c: c.optimizer in ("adam", "adamw"), "to optimizers adam and adamw"),
    ("step_epochs", lambda c: c.schedule == "step", "to schedule step"),
    ("gamma", lambda c: c.schedule in ("step", "exponential"), "to schedules step and exponential"),
    ("min_lr", lambda c: c.schedule == "cosine", "to schedule cosine"),
    ("pct_start", lambda c: c.schedule == "onecycle", "to schedule onecycle"),
    ("warmup_epochs", lambda c: c.schedule != "onecycle",
     "to schedules other than onecycle (which warms up by itself)"),
    ("plateau_patience", lambda c: c.schedule == "plateau", "to schedule plateau"),
    ("plateau_factor", lambda c: c.schedule == "plateau", "to schedule plateau"),
    ("patience", lambda c: c.early_stop != "none", "with early_stop val_acc or val_loss"),
)
RESUMABLE = tuple(n for n, f in FIELDS.items() if f.metadata["resumable"])


_HINTS = typing.get_type_hints(TrainConfig)


def field_kind(name: str) -> type:
    """The Python type of a field's values: str, int, float, bool, tuple or dict."""
    hint = _HINTS[name]
    return typing.get_origin(hint) or hint


def check_value(name: str, value: Any) -> Any:
    """One field's value, coerced to its type and checked against its own choices and bounds
    (not against the other fields: ``validate`` does that); ConfigError naming the field."""
    v, m = coerce(name, value), FIELDS[name].metadata
    if m["choices"] is not None and v not in m["choices"]:
        raise ConfigError(f"{name}: must be one of {', '.join(map(str, m['choices']))}; "
                          f"got {v!r}")
    for key, ok, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                          ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
        bound = m[key]
        if bound is not None and not ok(v, bound):
            raise ConfigError(f"{name}: must be {word} {bound:g}, got {v!r}")
    if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"{name}: must be a finite number, got {v!r}")
    return v


def validate(c: TrainConfig) -> None:
    """Bounds and choices from the field metadata, then the checks across fields."""
    for name in FIELDS:
        check_value(name, getattr(c, name))
    if len(c.betas) != 2 or not all(0 <= b < 1 for b in c.betas):
        raise ConfigError(f"betas: need two values in [0, 1), got {c.betas}")
    # a setting that only means something beside another is refused without it, rather than
    # silently ignored (at its default it is harmless and passes)
    for name, applies, where in _APPLIES:
        if getattr(c, name) != FIELDS[name].default and not applies(c):
            raise ConfigError(f"{name}: only applies {where}; it would be ignored here")
    if not c.dataset:
        raise ConfigError("dataset: must not be empty")
    if not c.model:
        raise ConfigError("model: must not be empty")
    if not all(isinstance(k, str) for k in c.model_args):
        raise ConfigError("model_args: keys must be argument names (strings)")
    if c.name and (c.name in (".", "..") or "/" in c.name or "\\" in c.name):
        raise ConfigError(f"name: must be a plain folder name (no '/'), got {c.name!r}")


def coerce(name: str, value: Any) -> Any:
    """A TOML/JSON/flag value as the field's type; strings (from flags) are parsed.

    Strict: ``true`` is not a number, ``2.5`` is not an int, a dict is not a string."""
    if name not in FIELDS:
        raise ConfigError(f"{name}: unknown field; valid fields: {', '.join(FIELDS)}")
    kind = field_kind(name)
    if kind is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"{name}: expected a JSON object, got {value!r}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a table/JSON object of model arguments, "
                              f"got {value!r}")
        return value
    if kind is tuple:
        if isinstance(value, str):
            value = value.strip("()[] ").split(",")
        if isinstance(value, (list, tuple)):
            try:
                return tuple(_number(float, v) for v in value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected numbers such as 0.9,0.999, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if kind in (int, float):
        try:
            return _number(kind, value)
        except ValueError:
            raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from None
    if isinstance(value, str):
        return value
    raise ConfigError(f"{name}: expected a string, got {value!r}")


def _number(kind: type, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)
    if isinstance(value, str):
        value = float(value) if kind is float else int(value.strip())
    if kind is int and isinstance(value, float):
        raise ValueError(value)  # 2.5 is not an epoch count; 2.0 from TOML is refused too
    return kind(value)


def from_dict(values: dict[str, Any]) -> TrainConfig:
    return TrainConfig(**{k: coerce(k, v) for k, v in values.items()})


# ------------------------------------------------------------------------------ files


def find_recipe(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_dir() and (p / "config.json").is_file():  # a run directory
        return p / "config.json"
    if p.is_file():
        return p
    candidate = RECIPES_DIR / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(q.stem for q in RECIPES_DIR.glob("*.toml"))) or "none"
    raise ConfigError(f"config: no recipe, file or run directory {name_or_path!r} "
                      f"(recipes: {known})")


def load_config_file(name_or_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config values, [result] table) of a TOML recipe or a JSON config (a run's
    config.json reproduces that run). The result table holds figures measured with the
    recipe, shown by `mnistlab recipes`; it is not configuration."""
    path = find_recipe(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except UnicodeDecodeError:
        raise ConfigError(f"config: {path} is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"config: cannot read {path} ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ConfigError(f"config: {path} is not valid {kind} ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a table of settings")
    if path.name == "config.json":  # a run's: reproduce it as a new run, with a new name
        data.pop("name", None)
    result = data.pop("result", {})
    data.pop("description", None)
    return data, result


def build_config(recipe: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    values: dict[str, Any] = {}
    if recipe:
        values.update(load_config_file(recipe)[0])
    values.update(overrides or {})
    return from_dict(values)


def list_recipes() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for path in sorted(RECIPES_DIR.glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        out.append((path.stem, data.get("description", ""), data.get("result", {})))
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict) and not v:
        return "{}"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise ConfigError(f"cannot write {type(v).__name__} as TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def to_toml(cfg: TrainConfig, *, description: str = "", comments: list[str] | None = None,
            result: dict[str, Any] | None = None) -> str:
    """The config as a TOML recipe, grouped as in ``--help``; ``--config`` reads it back.
    ``description``, ``comments`` (lines above the settings) and a ``[result]`` table (what
    was measured with it, shown by ``mnistlab recipes``) make it a recipe file."""
    lines: list[str] = []
    if description:
        lines.append(f"description = {_toml_value(description)}")
    lines += [f"# {c}" if c else "#" for c in comments or []]
    group = None
    for name, f in FIELDS.items():
        if f.metadata["group"] != group:
            group = f.metadata["group"]
            lines.append(f"{'' if not lines else chr(10)}# --- {group}")
        lines.append(f"{name} = {_toml_value(getattr(cfg, name))}")
    if result:
        lines += ["", "[result]"] + [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in result.items()]
    return "\n".join(lines) + "\n"
