"""Self-describing checkpoints: one loader for every consumer.

A checkpoint ``NAME`` is ``NAME.json`` (metadata: model name and arguments, classes,
normalization, dataset, split, seed, metrics, versions) next to ``NAME.<sha12>.safetensors``
(torch weights), ``NAME.<sha12>.mnc`` (pruned and quantized models in the compact format
of compact.py) or ``NAME.<sha12>.npz`` (NumPy engine weights, read with
``allow_pickle=False``). Training state for ``--resume`` (optimizer, schedule, RNG, early
stopping) goes to ``NAME.<sha12>.state.safetensors``, its non-tensor parts in the JSON.
Every file is written to a temporary name and renamed; the JSON, renamed last, names the
weight files and records their SHA-256, so a crash leaves the old or the new checkpoint
whole and a damaged or mismatched file is refused. Nothing is ever unpickled.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "mnistlab-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, damaged, foreign or does not match its model."""


# ------------------------------------------------------------------------------ helpers


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def code_version() -> str:
    """The git commit of the source tree (with '+dirty' if modified), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from . import __version__

        return f"mnistlab-{__version__}"


def versions() -> dict[str, str]:
    from . import __version__

    out = {"mnistlab": __version__, "python": platform.python_version(), "numpy": np.__version__}
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:  # the NumPy engine does not need torch
        pass
    return out


def base_meta(**fields: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "code_version": code_version(),
        **fields,
    }


# Nested training state (dicts, lists, tensors, scalars) <-> flat tensors + JSON skeleton.


def _flatten(obj: Any, prefix: str, tensors: dict) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, np.ndarray):
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": prefix}
    if isinstance(obj, dict):
        items = {str(k): _flatten(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        if obj and all(isinstance(k, int) for k in obj):
            return {"__intkeys__": items}
        return items
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def _unflatten(obj: Any, tensors: dict) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__intkeys__" in obj:
            return {int(k): _unflatten(v, tensors) for k, v in obj["__intkeys__"].items()}
        return {k: _unflatten(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ save


def save_checkpoint(path: str | Path, model: Any, meta: dict[str, Any], *,
                    train_state: dict[str, Any] | None = None,
                    compact: dict[str, Any] | None = None) -> Path:
    """Write ``path``.json plus weights; ``model`` is a torch module or a NumPy-engine model.

    ``compact``: write the weights in the compact format (compact.py) instead of
    safetensors; its entries (state-dict name -> ``compact.QTensor``) are stored as integer
    codes and scales, every other tensor as dense or bit-masked values. The model's own
    tensors for those names must be the QTensors' ``dequantize()``: that is what loads back.

    Weight files are named after their content (``best.<sha12>.safetensors``) and the JSON,
    renamed into place last, is the commit point: a process killed at any moment leaves
    either the old checkpoint or the new one, never a JSON pointing at other weights.
    Returns the JSON path.
    """
    path = Path(path)
    meta = dict(meta)
    meta.setdefault("engine", "torch")
    if compact is not None:
        from . import compact as compact_mod

        state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        weights, suffix = compact_mod.encode({**state, **compact}), compact_mod.SUFFIX
    elif meta["engine"] == "numpy":
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in model.state_dict().items()})
        weights, suffix = buf.getvalue(), ".npz"
    else:
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        weights, suffix = save(state), ".safetensors"
    written = [_write_blob(path, weights, suffix)]
    meta["weights"] = {"file": written[0], "sha256": _sha256(weights)}
    if train_state is not None:
        from safetensors.torch import save

        tensors: dict = {}
        meta["train_state"] = _flatten(train_state, "s", tensors)
        blob = save(tensors)
        written.append(_write_blob(path, blob, ".state.safetensors"))
        meta["train_state_file"] = {"file": written[1], "sha256": _sha256(blob)}
    json_path = path.with_name(path.name + ".json")
    atomic_write_json(json_path, meta)
    for stale in path.parent.glob(f"{path.name}.*"):  # files of the checkpoint this replaced
        if stale.name not in written and stale != json_path and ".tmp" not in stale.name:
            stale.unlink(missing_ok=True)
    return json_path


def _write_blob(path: Path, data: bytes, suffix: str) -> str:
    name = f"{path.name}.{_sha256(data)[:12]}{suffix}"
    atomic_write_bytes(path.with_name(name), data)
    return name


# ------------------------------------------------------------------------------ load


def resolve(path: str | Path, which: str = "best") -> Path:
    """A run directory, a checkpoint prefix or any of its files -> the checkpoint's JSON path."""
    p = Path(path)
    if p.is_dir():
        for candidate in (p / "checkpoints" / f"{which}.json", p / f"{which}.json"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{p}: no {which!r} checkpoint found (looked for "
                              f"checkpoints/{which}.json); is this a mnistlab run directory?")
    for suffix in (".state.safetensors", ".safetensors", ".mnc", ".npz", ".json"):
        if p.name.endswith(suffix):
            p = p.with_name(p.name[: -len(suffix)])
            break
    json_path = p.with_name(p.name + ".json")
    if not json_path.is_file() and "." in p.name:  # best.<sha12> -> best
        json_path = p.with_name(p.name.rsplit(".", 1)[0] + ".json")
    if not json_path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here (expected {json_path})")
    return json_path


def read_meta(json_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{json_path}: unreadable checkpoint metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{json_path}: not a mnistlab checkpoint (no 'format': '{FORMAT}')")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{json_path}: checkpoint format {meta['format_version']} is newer "
                              f"than this mnistlab reads ({FORMAT_VERSION}); upgrade mnistlab")
    for key in ("model", "model_args", "classes", "normalization", "weights"):
        if key not in meta:
            raise CheckpointError(f"{json_path}: checkpoint metadata lacks {key!r}")
    return meta


def _read_checked(json_path: Path, entry: dict) -> bytes:
    file = json_path.with_name(entry["file"])
    try:
        data = file.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{file}: cannot read checkpoint weights ({e.strerror})") from None
    if _sha256(data) != entry["sha256"]:
        raise CheckpointError(f"{file}: weights do not match their metadata (sha256 differs): "
                              "the file is damaged or belongs to another checkpoint")
    return data


@dataclass
class Checkpoint:
    model: Any  # torch nn.Module (eval mode) or a NumPy-engine model
    meta: dict[str, Any]
    path: Path  # the JSON file

    @property
    def engine(self) -> str:
        return self.meta.get("engine", "torch")

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    def normalize(self, images01: np.ndarray) -> np.ndarray:
        """(B, 28, 28) floats in 0..1 (ink high) -> (B, 1, 28, 28) float32 model input."""
        norm = self.meta["normalization"]
        x = (np.asarray(images01, dtype=np.float32) - norm["mean"]) / norm["std"]
        return x.reshape(-1, 1, 28, 28)

    def logits(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """(B, 1, 28, 28) normalized float32 -> (B, num_classes) logits, for either engine."""
        if self.engine == "numpy":
            from .scratch import predict_logits

            return predict_logits(self.model, x.reshape(len(x), -1), batch_size=batch_size)
        import torch

        device = next(self.model.parameters()).device
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(device)
                out.append(self.model(xb).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


def load_checkpoint(path: str | Path, *, which: str = "best", device: str = "cpu",
                    with_train_state: bool = False) -> Checkpoint:
    """Rebuild the model from its metadata and load its verified weights (eval mode)."""
    json_path = resolve(path, which)
    meta = read_meta(json_path)
    if meta.get("engine", "torch") == "numpy":
        weights = _read_checked(json_path, meta["weights"])
        from .train_numpy import build_from_meta

        try:
            arrays = dict(np.load(io.BytesIO(weights), allow_pickle=False))
            model = build_from_meta(meta["model"], meta["model_args"])
            model.load_state_dict(arrays)
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{json_path}: weights do not fit model {meta['model']!r}: {e}") from None
        model.eval()
    else:
        import torch
        from safetensors.torch import load

        from .models import create_model

        try:
            model = create_model(meta["model"], **meta["model_args"])
        except ValueError as e:
            raise CheckpointError(f"{json_path}: {e}") from None
        weights = _read_checked(json_path, meta["weights"])
        if meta.get("adapter"):  # low-rank adapters from `mnistlab finetune --mode lora`
            from .finetune import attach_adapter

            try:
                attach_adapter(model, meta["adapter"])
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{json_path}: cannot rebuild its adapters: {e}") from None
        try:
            if meta["weights"]["file"].endswith(".mnc"):
                from . import compact

                try:
                    state = {k: torch.from_numpy(np.array(v)) for k, v in
                             compact.dense(compact.decode(weights)).items()}
                except compact.CompactError as e:
                    raise CheckpointError(f"{json_path.with_name(meta['weights']['file'])}: "
                                          f"{e}") from None
            else:
                state = load(weights)
            model.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise CheckpointError(f"{json_path}: weights do not fit model {meta['model']!r} "
                                  f"with {meta['model_args']}: {' '.join(first[:3])}") from None
        model.to(torch.device(device)).eval()
    if with_train_state and "train_state" in meta:
        from safetensors.torch import load

        tensors = load(_read_checked(json_path, meta["train_state_file"]))
        meta = {**meta, "train_state": _unflatten(meta["train_state"], tensors)}
    return Checkpoint(model, meta, json_path)
