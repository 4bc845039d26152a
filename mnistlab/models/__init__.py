"""Model registry: ``create_model(name, **kwargs)``.

Every model maps ``(B, 1, 28, 28)`` float images to ``(B, num_classes)`` logits and has the
same surface: ``features(x) -> (B, D)``, a ``head`` module (``D -> num_classes``),
``reset_head(num_classes)``, and ``config`` (its constructor arguments, so a checkpoint can
rebuild it). Models are pure: no I/O, no device choice, no printing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from .base import Classifier

_REGISTRY: dict[str, Callable[..., Classifier]] = {}


def register(name: str):
    def wrap(cls):
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs) -> Classifier:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    cls = _REGISTRY[name]
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"model {name!r} takes no argument {', '.join(map(repr, unknown))}; "
                         f"it takes {', '.join(accepted)}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad arguments for model {name!r}: {e}") from None


def registry_docs() -> dict[str, str]:
    """Model name -> the first line of its class docstring (no model is built)."""
    return {name: (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            for name, cls in sorted(_REGISTRY.items())}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


from . import cnn, mlp, resnet  # noqa: E402,F401  (registers the models)

try:  # the ViT lives in its own file; keep the registry usable while it is absent
    from . import vit  # noqa: E402,F401
except ImportError:  # pragma: no cover
    pass

__all__ = ["Classifier", "create_model", "list_models", "register", "count_parameters",
           "registry_docs"]
