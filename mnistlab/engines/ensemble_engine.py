"""The "ensemble" engine: several trained models behind one checkpoint.

An ensemble checkpoint (written by ``mnistlab ensemble``, ensemble.py) is an ordinary
mnistlab checkpoint whose engine is "ensemble": its ``model_args["members"]`` list each
member's engine, model, arguments (and LoRA adapter), its calibration temperature and the
SHA-256 of its weights; its weights file is one safetensors file holding each member's own
weights file as a byte array (``member0``, ``member1``, ...), written and read by the
member's engine. So ``load_checkpoint`` rebuilds it like any model (every size bounded by the
member's engine, every member's bytes checked against its SHA-256, nothing unpickled), and
``eval``, ``predict`` and ``serve`` use it through the engine protocol unchanged.

Why an engine and not a torch module wrapping the members: members of either engine (torch
and NumPy) can join; each member keeps the file format its engine defines; and an ensemble
is not a model one can train, so it stays out of the model registry (``models()`` is empty
and ``check``/``fit`` refuse).

Its logits are the log of the members' averaged probabilities, each member's softmax taken
at its temperature (1 when it was never calibrated): softmax of them gives back exactly the
averaged probabilities, which is what every consumer computes from logits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from .base import _LOADED, get_engine

MAX_MEMBERS = 64
_NOT_TRAINED = ("model: an ensemble is not trained; make one from trained runs with "
                "`mnistlab ensemble RUN RUN ...`")


@dataclass
class Member:
    spec: dict[str, Any]  # engine, model, model_args, [adapter], temperature, sha256, run
    model: Any  # the member's model, as its engine builds it

    @property
    def engine(self) -> Any:
        return get_engine(self.spec["engine"])


@dataclass
class EnsembleModel:
    members: list[Member]


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def check_spec(spec: Any, i: int) -> str | None:
    """The first problem with member ``i``'s entry, or None."""
    if not isinstance(spec, dict):
        return f"member {i} must be a table, got {spec!r:.60}"
    for key, kind in (("engine", str), ("model", str), ("model_args", dict), ("sha256", str)):
        if not isinstance(spec.get(key), kind):
            return f"member {i}: {key!r} must be a {kind.__name__}"
    if spec["engine"] == "ensemble":
        return f"member {i} is itself an ensemble; list its members instead"
    t = spec.get("temperature", 1.0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or t <= 0:
        return f"member {i}: temperature must be a number > 0, got {t!r}"
    return None


class EnsembleEngine:
    name = "ensemble"
    weights_suffix = ".safetensors"

    def models(self) -> dict[str, str]:
        return {}  # nothing to train: `mnistlab ensemble` makes them

    def check(self, cfg: Any, hooks: Any = None) -> None:
        raise ConfigError(_NOT_TRAINED)

    def build(self, model: str, model_args: dict[str, Any], num_classes: int, *,
              seed: int = 0) -> Any:
        raise ConfigError(_NOT_TRAINED)

    def fit(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise ConfigError(_NOT_TRAINED)

    def from_meta(self, meta: dict[str, Any]) -> EnsembleModel:
        specs = meta["model_args"].get("members")
        if not isinstance(specs, list) or not 2 <= len(specs) <= MAX_MEMBERS:
            raise ConfigError(f"model_args: an ensemble lists 2..{MAX_MEMBERS} members")
        members = []
        for i, spec in enumerate(specs):
            problem = check_spec(spec, i)
            if problem:
                raise ConfigError(f"model_args: {problem}")
            sub = {k: spec[k] for k in ("engine", "model", "model_args", "adapter") if k in spec}
            members.append(Member(spec, get_engine(spec["engine"]).from_meta(sub)))
        return EnsembleModel(members)

    def model_args(self, model: EnsembleModel) -> dict[str, Any]:
        return {"members": [m.spec for m in model.members]}

    def weights_bytes(self, model: EnsembleModel) -> bytes:
        from safetensors.numpy import save

        return save({f"member{i}": np.frombuffer(m.engine.weights_bytes(m.model), np.uint8)
                     for i, m in enumerate(model.members)})

    def load_weights(self, model: EnsembleModel, blob: bytes) -> None:
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            arrays = load(blob)
        except SafetensorError as e:
            raise ValueError(f"not a safetensors file ({e})") from None
        for i, m in enumerate(model.members):
            data = arrays.get(f"member{i}")
            if data is None:
                raise ValueError(f"member {i}'s weights are missing")
            data = data.tobytes()
            if hashlib.sha256(data).hexdigest() != m.spec["sha256"]:
                raise ValueError(f"member {i}'s weights do not match their sha256")
            m.engine.load_weights(m.model, data)

    def logits(self, model: EnsembleModel, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """log of the mean of the members' probabilities at their temperatures, (B, C)."""
        probs = np.zeros((len(x), 0))
        for m in model.members:
            z = m.engine.logits(m.model, x, batch_size).astype(np.float64)
            p = _softmax(z / float(m.spec.get("temperature", 1.0)))
            probs = p if probs.shape[1] == 0 else probs + p
        probs /= len(model.members)
        return np.log(np.maximum(probs, 1e-30)).astype(np.float32)

    def num_parameters(self, model: EnsembleModel, trainable_only: bool = False) -> int:
        return sum(m.engine.num_parameters(m.model) for m in model.members)

    def set_threads(self, n: int) -> None:
        for engine in list(_LOADED.values()):  # the members' engines (loaded by from_meta)
            if engine is not self:
                engine.set_threads(n)

    def to_device(self, model: EnsembleModel, device: str) -> None:
        for m in model.members:
            m.engine.to_device(m.model, device)

    def summary(self, model: EnsembleModel) -> dict[str, Any]:
        """One row per member (its totals), and the ensemble's."""
        rows = []
        for i, m in enumerate(model.members):
            s = m.engine.summary(m.model)
            rows.append({"layer": f"member{i}", "type": m.spec["model"], "output": "(1, C)",
                         "params": s["params"], "flops": s["flops"]})
        total = sum(r["params"] for r in rows)
        return {"rows": rows, "params": total, "trainable": 0,
                "flops": sum(r["flops"] for r in rows)}


ENGINE = EnsembleEngine()
