"""The Engine protocol and the engine registry.

An engine turns checkpoint metadata into a model, moves its weights to and from bytes,
computes logits, and fits a ``TrainConfig`` into a run directory through the run scaffold
(run.py). It honours every config field or refuses it in ``check`` with a ConfigError
naming the field; tests/test_engines.py walks every field for every engine.

The built-in engines are imported on first use (``get_engine``), so looking one up costs
nothing until a model is built: ``mnistlab --help`` and the NumPy engine never import torch.
Another package can add an engine with ``register_engine``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from ..config import TrainConfig

# name -> module defining ENGINE, imported on first use
_BUILTIN = {"numpy": "mnistlab.engines.numpy_engine", "torch": "mnistlab.engines.torch_engine",
            "ensemble": "mnistlab.engines.ensemble_engine"}
_LOADED: dict[str, Engine] = {}


class Engine(Protocol):
    name: str  # "torch", "numpy": recorded as a checkpoint's "engine"
    weights_suffix: str  # file suffix of its weights, e.g. ".safetensors"

    def models(self) -> dict[str, str]:
        """Model names this engine builds -> one-line descriptions."""

    def check(self, cfg: TrainConfig, hooks: Any = None) -> None:
        """Refuse (ConfigError naming the field) every setting this engine does not honour."""

    def build(self, model: str, model_args: dict[str, Any], num_classes: int) -> Any:
        """A new model; bad arguments raise ConfigError('model_args: ...')."""

    def from_meta(self, meta: dict[str, Any]) -> Any:
        """The (untrained) model a checkpoint's metadata describes."""

    def model_args(self, model: Any) -> dict[str, Any]:
        """The arguments that rebuild ``model`` (stored as the checkpoint's model_args)."""

    def weights_bytes(self, model: Any) -> bytes:
        """The model's weights as one file's bytes (never a pickle)."""

    def load_weights(self, model: Any, blob: bytes) -> None:
        """Load ``weights_bytes`` output into ``model``; ValueError if they do not fit."""

    def logits(self, model: Any, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """(B, 1, 28, 28) normalized float32 -> (B, num_classes) float32 logits."""

    def num_parameters(self, model: Any, trainable_only: bool = False) -> int: ...

    def set_threads(self, n: int) -> None:
        """Use ``n`` CPU threads from now on (0: leave the library default)."""

    def to_device(self, model: Any, device: str) -> None:
        """Move ``model`` to ``device`` ("cpu", "cuda", ...) in evaluation mode."""

    def summary(self, model: Any) -> dict[str, Any]:
        """Per-layer rows (layer, type, output, params, flops) and totals."""

    def fit(self, cfg: TrainConfig, run: Any, model: Any, train: Any, val: Any, *,
            hooks: Any, state: dict[str, Any] | None, log: Any) -> dict[str, Any]:
        """Train ``model`` as ``cfg`` says, logging and checkpointing through ``run``
        (run.RunDir); ``state`` is the training state of a resumed run. Returns what the
        run really used, measured during training, for run.json: "parameters", and
        "device", "threads" (and what else matters) under "hardware"."""


def register_engine(engine: Engine) -> None:
    _LOADED[engine.name] = engine


def list_engines() -> list[str]:
    return sorted({*_BUILTIN, *_LOADED})


def get_engine(name: str) -> Engine:
    if name not in _LOADED:
        if name not in _BUILTIN:
            raise ConfigError(f"engine: unknown engine {name!r}; known: "
                              f"{', '.join(list_engines())}")
        _LOADED[name] = importlib.import_module(_BUILTIN[name]).ENGINE
    return _LOADED[name]


def list_models() -> dict[str, tuple[str, str]]:
    """Every registered model: name -> (engine name, description)."""
    out: dict[str, tuple[str, str]] = {}
    for name in list_engines():
        for model, doc in get_engine(name).models().items():
            out[model] = (name, doc)
    return dict(sorted(out.items()))


def engine_for_model(model: str) -> Engine:
    """The engine that builds ``model`` (the NumPy engine is asked first: it is cheap)."""
    for name in list_engines():
        engine = get_engine(name)
        if model in engine.models():
            return engine
    raise ConfigError(f"model: unknown model {model!r}; known: {', '.join(list_models())}")
