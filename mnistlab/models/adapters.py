"""Low-rank adapters (LoRA, through Hugging Face PEFT) on registry models.

``attach_adapter`` injects them from a checkpoint's ``adapter`` entry, so the engine
rebuilds a LoRA-tuned model from its metadata with the same call that fine-tuning used;
``merge_adapter`` folds them into a plain registry model. PEFT is the optional extra
``mnistlab[lora]`` and is imported only when an adapter is used.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..errors import ConfigError

__all__ = ["attach_adapter", "merge_adapter", "lora_target_names"]


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError("mode lora needs Hugging Face PEFT: "
                          "pip install 'mnistlab[lora]'") from None
    return peft


def lora_target_names(model: nn.Module, patterns: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Full names of the backbone's Linear/Conv2d layers whose name is or ends with a pattern
    (all of them for no patterns). The head is never a target: it is new and trains fully."""
    from torch import nn

    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
              and n != "head" and not n.startswith("head.")]
    if not patterns:
        return layers
    hits = {p: [n for n in layers if n == p or n.endswith("." + p)] for p in patterns}
    missing = [p for p, ns in hits.items() if not ns]
    if missing:
        raise ConfigError(f"lora_targets: {', '.join(missing)} match no Linear/Conv2d layer; "
                          f"layers: {', '.join(layers)}")
    return [n for n in layers if any(n in ns for ns in hits.values())]


def attach_adapter(model: nn.Module, adapter: dict[str, Any]) -> nn.Module:
    """Inject LoRA layers in place (names become ``...base_layer.weight``, ``...lora_A...``).

    PEFT freezes every non-adapter weight. ``adapter`` is the checkpoint's ``adapter`` entry,
    so checkpoint.py rebuilds a fine-tuned model with the same call.
    """
    if adapter.get("type") != "lora":
        raise ConfigError(f"adapter: unknown type {adapter.get('type')!r} (expected 'lora')")
    peft = _peft()
    config = peft.LoraConfig(r=adapter["rank"], lora_alpha=adapter["alpha"],
                             lora_dropout=adapter["dropout"],
                             target_modules=list(adapter["target_modules"]), bias="none")
    peft.inject_adapter_in_model(config, model)
    return model


def merge_adapter(model: nn.Module, meta: dict[str, Any]) -> nn.Module:
    """A plain registry model equal to ``model`` with each adapter folded into its layer
    (W <- W + (alpha / r) * B @ A); ``model`` itself is left untouched."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from . import create_model

    merged = copy.deepcopy(model)
    for name, module in list(merged.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge(safe_merge=True)  # safe: refuses to write NaN/inf into the weights
            parent, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent), child, module.get_base_layer())
    plain = create_model(meta["model"], **meta["model_args"])
    plain.load_state_dict(merged.state_dict())  # strict: only plain registry weights are left
    return plain.to(next(model.parameters()).device).eval()
