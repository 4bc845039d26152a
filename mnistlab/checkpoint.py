"""Self-describing checkpoints: one loader for every consumer.

A checkpoint ``NAME`` is ``NAME.json`` (metadata: model name and arguments, classes,
normalization, dataset, split, seed, metrics, versions) next to ``NAME.<sha12>.safetensors``
(torch weights), ``NAME.<sha12>.mnc`` (pruned and quantized weights in the compact format of
compact.py) or ``NAME.<sha12>.npz`` (NumPy engine weights, read with ``allow_pickle=False``). Training state for ``--resume`` (optimizer, schedule, RNG, early
stopping) goes to ``NAME.<sha12>.state.safetensors``, its non-tensor parts in the JSON.
Every file is written to a temporary name and renamed; the JSON, renamed last, names the
weight files and records their SHA-256, so a crash leaves the old or the new checkpoint
whole and a damaged or mismatched file is refused. Nothing is ever unpickled.

This module owns the format only. Turning metadata into a model and weights into bytes is
the engine's job (``engines.get_engine(meta["engine"])``); the metadata is validated
(``validate_meta``) and the weights' checksum verified before any model is built.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import compact as compact_mod
from .engines import get_engine
from .errors import CheckpointError, ConfigError

FORMAT = "mnistlab-checkpoint"
FORMAT_VERSION = 1

__all__ = ["CheckpointError", "Checkpoint", "load_checkpoint", "save_checkpoint", "base_meta",
           "resolve", "read_meta", "validate_meta", "atomic_write_json", "atomic_write_bytes",
           "plain_torch_problem"]


# ------------------------------------------------------------------------------ helpers


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync it, rename it over ``path``, fsync the folder (so
    the rename survives a power cut). On any failure (a full disk, a read-only folder) the
    temporary file is removed and ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


# Nested training state (dicts, lists, arrays, tensors, scalars) <-> flat arrays + a JSON
# skeleton. The arrays go to one safetensors file through its NumPy API, so either engine's
# state is stored the same way and loading it never needs torch unless it held tensors.


def _flatten(obj: Any, prefix: str, arrays: dict) -> Any:
    if type(obj).__module__.startswith("torch") and hasattr(obj, "detach"):  # a tensor
        arrays[prefix] = obj.detach().cpu().contiguous().numpy()
        return {"__tensor__": prefix}
    if isinstance(obj, np.ndarray):
        arrays[prefix] = np.ascontiguousarray(obj)
        return {"__ndarray__": prefix}
    if isinstance(obj, dict):
        items = {str(k): _flatten(v, f"{prefix}.{k}", arrays) for k, v in obj.items()}
        if obj and all(isinstance(k, int) for k in obj):
            return {"__intkeys__": items}
        return items
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}.{i}", arrays) for i, v in enumerate(obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise CheckpointError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def _unflatten(obj: Any, arrays: dict) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            import torch

            return torch.from_numpy(arrays[obj["__tensor__"]])
        if "__ndarray__" in obj:
            return arrays[obj["__ndarray__"]]
        if "__intkeys__" in obj:
            return {int(k): _unflatten(v, arrays) for k, v in obj["__intkeys__"].items()}
        return {k: _unflatten(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, arrays) for v in obj]
    return obj


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ save


def save_checkpoint(path: str | Path, model: Any, meta: dict[str, Any], *,
                    train_state: dict[str, Any] | None = None,
                    compact: dict[str, Any] | None = None) -> Path:
    """Write ``path``.json plus weights; ``model`` is a torch module or a NumPy-engine model.

    ``compact``: write the weights in the compact format of pruned and quantized models
    (compact.py, ``.mnc``) instead of the engine's own; its entries (state-dict name ->
    ``compact.QTensor``) are stored as integer codes and scales, every other tensor as dense
    or bit-masked values. The model's own tensors for those names must be the QTensors'
    ``dequantize()``: that is what loads back.

    Weight files are named after their content (``best.<sha12>.safetensors``) and the JSON,
    renamed into place last, is the commit point: a process killed at any moment leaves
    either the old checkpoint or the new one, never a JSON pointing at other weights.
    Returns the JSON path.
    """
    path = Path(path)
    meta = dict(meta)
    meta.setdefault("engine", "torch")
    engine = get_engine(meta["engine"])
    weights, suffix = engine.weights_bytes(model), engine.weights_suffix
    if compact is not None:
        weights, suffix = _compact_bytes(engine, weights, compact), compact_mod.SUFFIX
    json_path = path.with_name(path.name + ".json")
    written: list[str] = []
    try:
        written.append(_write_blob(path, weights, suffix))
        meta["weights"] = {"file": written[0], "sha256": _sha256(weights)}
        if train_state is not None:
            from safetensors.numpy import save

            arrays: dict = {}
            meta["train_state"] = _flatten(train_state, "s", arrays)
            blob = save(arrays)
            written.append(_write_blob(path, blob, ".state.safetensors"))
            meta["train_state_file"] = {"file": written[1], "sha256": _sha256(blob)}
        atomic_write_json(json_path, meta)  # the commit point
    except BaseException:
        _remove_unreferenced(path, json_path)  # e.g. a full disk: no orphaned weights
        raise
    _remove_unreferenced(path, json_path)  # the files of the checkpoint this replaced
    return json_path


def _remove_unreferenced(path: Path, json_path: Path) -> None:
    """Delete ``path``'s weight files that its JSON (if any) does not name."""
    keep: set[str] = set()
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        meta = json.loads(json_path.read_text())
        keep = {meta[k]["file"] for k in ("weights", "train_state_file") if k in meta}
    for f in path.parent.glob(f"{path.name}.*"):
        if f.name not in keep and f != json_path and not f.name.startswith("."):
            with contextlib.suppress(OSError):
                f.unlink()


def _compact_bytes(engine: Any, weights: bytes, qtensors: dict[str, Any]) -> bytes:
    """The engine's safetensors weights re-encoded in the compact format, with ``qtensors``
    (integer codes and scales) in place of their float tensors."""
    from safetensors.numpy import load

    if engine.weights_suffix != ".safetensors":
        raise CheckpointError(f"compact weights: the {engine.name} engine's weights cannot be "
                              "stored compactly")
    return compact_mod.encode({**load(weights), **qtensors})


def _from_compact(file: Path, engine: Any, blob: bytes) -> bytes:
    """Compact weights decoded (checked, dequantized) into the engine's safetensors bytes."""
    from safetensors.numpy import save

    if engine.weights_suffix != ".safetensors":
        raise CheckpointError(f"{file}: compact weights for the {engine.name} engine")
    try:
        arrays = compact_mod.dense(compact_mod.decode(blob))
    except compact_mod.CompactError as e:
        raise CheckpointError(f"{file}: {e}") from None
    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()})


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
    for suffix in (".state.safetensors", ".safetensors", compact_mod.SUFFIX, ".npz", ".json"):
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
    """A checkpoint's metadata, validated (``validate_meta``); CheckpointError otherwise."""
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{json_path}: unreadable checkpoint metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{json_path}: not a mnistlab checkpoint (no 'format': '{FORMAT}')")
    problem = validate_meta(meta)
    if problem:
        raise CheckpointError(f"{json_path}: bad checkpoint metadata: {problem}")
    return meta


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def _file_entry(entry: Any) -> str | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        return "must be {'file': NAME, 'sha256': HEX}"
    name = entry["file"]
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return f"file must be a plain file name beside the metadata, got {name!r}"
    sha = entry.get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        return "sha256 must be 64 lowercase hex digits"
    return None


MAX_CLASSES = 10_000


def validate_meta(meta: dict[str, Any]) -> str | None:
    """The first problem with a checkpoint's metadata (types, ranges, file names), or None.

    Run before anything is built from it: sizes inside ``model_args`` are bounded by the
    engine when it builds the model (``from_meta``)."""
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return f"format_version must be a positive integer, got {version!r}"
    if version > FORMAT_VERSION:
        return (f"format {version} is newer than this mnistlab reads ({FORMAT_VERSION}); "
                "upgrade mnistlab")
    for key, kind in (("engine", str), ("model", str), ("model_args", dict), ("classes", list),
                      ("normalization", dict), ("weights", dict)):
        if key == "engine" and key not in meta:
            continue  # written by every version, but "torch" is the default
        if not isinstance(meta.get(key), kind):
            return f"{key!r} must be a {kind.__name__}, got {meta.get(key)!r:.60}"
    classes = meta["classes"]
    if not 2 <= len(classes) <= MAX_CLASSES or not all(isinstance(c, str) and c for c in classes):
        return f"'classes' must list 2..{MAX_CLASSES} non-empty names, got {classes!r:.60}"
    if len(set(classes)) != len(classes):
        return "'classes' has duplicate names"
    norm = meta["normalization"]
    if not (_finite(norm.get("mean")) and _finite(norm.get("std")) and norm["std"] > 0):
        return f"'normalization' needs a finite mean and a std > 0, got {norm!r:.60}"
    if "train_state" in meta and "train_state_file" not in meta:
        return "'train_state' needs its 'train_state_file'"
    for key in ("weights", "train_state_file"):
        if key in meta:
            problem = _file_entry(meta[key])
            if problem:
                return f"{key!r}: {problem}"
    calib = meta.get("calibration")
    if calib is not None and not (isinstance(calib, dict) and _finite(calib.get("temperature"))
                                  and calib["temperature"] > 0):
        return f"'calibration' needs a temperature > 0, got {calib!r:.60}"
    return None


def _read_checked(json_path: Path, entry: dict) -> bytes:
    """The bytes of a file the metadata names, verified against its recorded SHA-256."""
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

    @property
    def temperature(self) -> float:
        """Temperature-scaling factor fitted on validation (1.0 when never calibrated)."""
        return float((self.meta.get("calibration") or {}).get("temperature", 1.0))

    def normalize(self, images01: np.ndarray) -> np.ndarray:
        """(B, 28, 28) floats in 0..1 (ink high) -> (B, 1, 28, 28) float32 model input."""
        norm = self.meta["normalization"]
        x = (np.asarray(images01, dtype=np.float32) - norm["mean"]) / norm["std"]
        return x.reshape(-1, 1, 28, 28)

    def logits(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """(B, 1, 28, 28) normalized float32 -> (B, num_classes) raw logits."""
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return get_engine(self.engine).logits(self.model, x, batch_size)


def plain_torch_problem(ck: Checkpoint, source: str | Path, verb: str) -> str | None:
    """Why ``ck`` cannot be compressed or exported (``verb``: "compress", "export"): only a
    PyTorch-engine checkpoint without LoRA adapters can. None when it can."""
    if ck.engine != "torch":
        return (f"{source}: a {ck.engine}-engine run ({ck.meta['model']}) cannot be "
                f"{verb}ed; only PyTorch-engine runs can")
    if ck.meta.get("adapter"):
        return (f"{source}: has LoRA adapters; merge them first (mnistlab finetune ... "
                f"--merge) and {verb} checkpoints/merged")
    return None


def load_checkpoint(path: str | Path, *, which: str = "best", device: str = "cpu",
                    with_train_state: bool = False) -> Checkpoint:
    """Validate the metadata, verify the weights' checksum, then rebuild the model from the
    metadata and load the weights (eval mode)."""
    json_path = resolve(path, which)
    meta = read_meta(json_path)
    try:
        engine = get_engine(meta.get("engine", "torch"))
    except ConfigError as e:
        raise CheckpointError(f"{json_path}: {e}") from None
    weights = _read_checked(json_path, meta["weights"])  # before anything is built
    if meta["weights"]["file"].endswith(compact_mod.SUFFIX):  # pruned / quantized weights
        weights = _from_compact(json_path.with_name(meta["weights"]["file"]), engine, weights)
    try:
        model = engine.from_meta(meta)
    except (ConfigError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{json_path}: {e}") from None
    try:
        engine.load_weights(model, weights)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        lines = str(e).strip().splitlines()
        raise CheckpointError(f"{json_path}: weights do not fit model {meta['model']!r} with "
                              f"{meta['model_args']}: {' '.join(lines[:3])}") from None
    engine.to_device(model, device)
    outputs = engine.logits(model, np.zeros((1, 1, 28, 28), np.float32)).shape[1]
    if outputs != len(meta["classes"]):
        raise CheckpointError(f"{json_path}: the model has {outputs} outputs but the metadata "
                              f"names {len(meta['classes'])} classes")
    if with_train_state and "train_state" in meta:
        from safetensors import SafetensorError
        from safetensors.numpy import load

        try:
            arrays = load(_read_checked(json_path, meta["train_state_file"]))
            meta = {**meta, "train_state": _unflatten(meta["train_state"], arrays)}
        except (SafetensorError, KeyError, TypeError) as e:
            raise CheckpointError(f"{json_path}: unreadable training state ({e})") from None
    return Checkpoint(model, meta, json_path)
