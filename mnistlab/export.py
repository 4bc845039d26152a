"""Export a trained model to ONNX or TorchScript, and run ONNX models with ONNX Runtime.

    export("runs/NAME", "onnx")                  -> runs/NAME/export/model.onnx
    export("runs/NAME", "onnx", int8="static")   -> also model.int8-static.onnx
    export("runs/NAME", "torchscript")           -> runs/NAME/export/model.torchscript.pt
    load_onnx("runs/NAME")  # a Checkpoint-like object for Predictor (predict/serve --runtime onnx)

Every export has a dynamic batch size (input ``image``: (B, 1, 28, 28) float32, normalized;
output ``logits``: (B, classes)) and carries what a consumer needs as metadata: the class
names, the normalization (mean, std of 0..1 pixels) and the model and its source checkpoint
(ONNX ``metadata_props`` key ``mnistlab``; TorchScript extra file ``mnistlab.json``).

A parity check runs on real validation images before a file is kept: float exports must
match PyTorch's logits within 1e-4 (max absolute difference) at batch sizes 1, 7 and 256;
int8 models must agree with the float model's top class on at least 98% of the images.

Tools and why:
- ONNX: ``torch.onnx.export(..., dynamo=True)``, torch's default exporter since 2.9 (it
  goes through ``torch.export`` and needs ``onnxscript``). The older TorchScript-based
  exporter (``dynamo=False``) is ~20x faster but warns in torch 2.13 that it will be
  removed; an export is done once per model, so the maintained path wins.
- int8: ONNX Runtime's quantization tools: ``quantize_dynamic`` (int8 weights, activations
  quantized per batch at run time) for the dense layers (MatMul/Gemm), ``quantize_static``
  (QDQ format, per-channel int8 weights, uint8 activations with ranges calibrated on
  training images) for convolutions and dense layers. Weights use 7 bits (``reduce_range``,
  see ``quantize_onnx``) so the result does not depend on the CPU having VNNI. They run on ONNX Runtime's int8
  kernels; ``torch.ao.quantization`` is deprecated in torch 2.13.
- TorchScript: ``torch.jit.trace``, which torch 2.13 also marks deprecated; kept because
  some deployments still load ``.pt`` files with libtorch. Prefer ONNX.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import Checkpoint, load_checkpoint, plain_torch_problem
from .errors import CheckpointError

FORMATS = ("onnx", "torchscript")
INT8 = ("none", "dynamic", "static")
FLOAT_TOL = 1e-4  # max |logit difference| of a float export against PyTorch
INT8_AGREEMENT = 0.98  # least top-1 agreement of an int8 model with the float model
META_KEY = "mnistlab"


class ExportError(CheckpointError):
    """A model that cannot be exported as asked, or an export that fails its check."""


@dataclass
class ExportResult:
    path: Path  # the file written (the int8 one when int8 was asked for)
    format: str
    int8: str
    bytes: int
    parity: dict[str, Any] = field(default_factory=dict)  # what the check measured
    files: list[Path] = field(default_factory=list)  # every file written


# ------------------------------------------------------------------------------ helpers


def _onnx_modules() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ExportError(f"ONNX export and inference need the onnx extra ({e.name} is "
                          "missing): pip install 'mnistlab[onnx]'") from None
    return onnx, onnxruntime


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress lines, deprecation warnings and logging."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo",
                                                "onnxscript", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_meta(ck: Checkpoint, int8: str = "none") -> dict[str, Any]:
    """What travels inside an exported file: enough to preprocess and label, and where from."""
    m = ck.meta
    keys = ("model", "model_args", "classes", "normalization", "calibration", "dataset",
            "split", "seed", "metrics", "parent", "compression", "distill", "versions",
            "code_version")
    return {**{k: m[k] for k in keys if k in m},
            "source": {"path": str(ck.path.resolve()), "weights_sha256": m["weights"]["sha256"]},
            "exported": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "int8": int8,
            "input": "image: (B, 1, 28, 28) float32, (pixels in 0..1 - mean) / std, ink high",
            "output": "logits: (B, classes) float32"}


def check_images(ck: Checkpoint, n: int = 256, *, split: str = "val",
                 data_dir: str | None = None, seed: int = 0) -> np.ndarray:
    """``n`` normalized images of the checkpoint's own dataset: (n, 1, 28, 28) float32."""
    from . import data as data_mod

    sp = ck.meta.get("split", {})
    val_size = sp.get("val_size", -1)
    ds = data_mod.load(ck.meta["dataset"], split, data_dir=data_dir,
                       val_size=None if val_size is None or val_size < 0 else val_size,
                       seed=sp.get("seed", 0))
    idx = np.random.default_rng(seed).permutation(len(ds))[:n]
    return ck.normalize(ds.images[np.sort(idx)].astype(np.float32) / 255.0)


def _torch_logits(model: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(x)).float().numpy()


def _float_parity(run: Callable[[np.ndarray], np.ndarray], ref: Callable[[np.ndarray], np.ndarray],
                  x: np.ndarray) -> dict[str, Any]:
    """Max |difference| at batch sizes 1, 7 and all of ``x``; raises past FLOAT_TOL."""
    diffs = {}
    for b in (1, 7, len(x)):
        diffs[b] = float(np.abs(run(x[:b]) - ref(x[:b])).max())
    worst = max(diffs.values())
    if not worst <= FLOAT_TOL:
        raise ExportError(f"parity check failed: exported logits differ from PyTorch's by "
                          f"{worst:.3g} (tolerance {FLOAT_TOL:g}) at batch sizes "
                          f"{', '.join(map(str, diffs))}")
    return {"max_abs_diff": worst, "batch_sizes": list(diffs), "images": len(x)}


# ------------------------------------------------------------------------------ export


def export(source: str | Path, format: str = "onnx", *, output: str | Path | None = None,
           int8: str = "none", calibration: int = 512, check: bool = True,
           data_dir: str | None = None, log: Callable[[str], None] = print) -> ExportResult:
    """Export ``source`` (a run directory or checkpoint); see the module docstring."""
    if format not in FORMATS:
        raise ExportError(f"format: unknown format {format!r}; choose {' or '.join(FORMATS)}")
    if int8 not in INT8:
        raise ExportError(f"int8: must be one of {', '.join(INT8)}, got {int8!r}")
    if int8 != "none" and format != "onnx":
        raise ExportError("int8: int8 models are made with ONNX Runtime's quantization; use "
                          "--format onnx")
    if calibration < 1:
        raise ExportError(f"calibration: need at least 1 image, got {calibration}")
    ck = load_checkpoint(source)
    if problem := plain_torch_problem(ck, source, "export"):
        raise ExportError(problem)
    folder = (ck.path.parent.parent if ck.path.parent.name == "checkpoints"
              else ck.path.parent) / "export"
    x = check_images(ck, data_dir=data_dir) if check else None
    if format == "torchscript":
        path = Path(output) if output else folder / "model.torchscript.pt"
        parity = export_torchscript(ck, path, x)
        result = ExportResult(path, format, int8, path.stat().st_size, parity, [path])
    else:
        fp32 = Path(output) if output and int8 == "none" else folder / "model.onnx"
        parity = export_onnx(ck, fp32, x)
        result = ExportResult(fp32, format, "none", fp32.stat().st_size, parity, [fp32])
        if int8 != "none":
            path = Path(output) if output else folder / f"model.int8-{int8}.onnx"
            calib = None
            if int8 == "static":
                calib = check_images(ck, calibration, split="train", data_dir=data_dir, seed=1)
            parity = quantize_onnx(fp32, path, int8, calib, ck, x)
            result = ExportResult(path, format, int8, path.stat().st_size, parity,
                                  [fp32, path])
    log(f"exported {ck.meta['model']} to {result.path} ({result.bytes:,} bytes)"
        + (f"; parity: {json.dumps(result.parity)}" if result.parity else "; not checked"))
    return result


def export_onnx(ck: Checkpoint, path: Path, x: np.ndarray | None) -> dict[str, Any]:
    """Float ONNX export with a dynamic batch dimension; returns the parity figures."""
    import torch

    onnx, ort = _onnx_modules()
    path.parent.mkdir(parents=True, exist_ok=True)
    model = ck.model.cpu().eval()
    dummy = torch.zeros(2, 1, 28, 28)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with _quiet():
            torch.onnx.export(model, (dummy,), str(tmp), dynamo=True, verbose=False,
                              input_names=["image"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), external_data=False)
    except Exception as e:  # an exporter failure is a model the exporter cannot handle
        tmp.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"ONNX export of {ck.meta['model']!r} failed: {first}") from None
    proto = onnx.load(str(tmp))
    _set_meta(proto, export_meta(ck))
    onnx.save(proto, str(tmp))
    parity = {}
    if x is not None:
        sess = session(tmp, threads=None, ort=ort)
        parity = _float_parity(lambda a: sess.run(None, {"image": a})[0],
                               lambda a: _torch_logits(model, a), x)
    tmp.replace(path)
    return parity


def _set_meta(proto: Any, meta: dict[str, Any]) -> None:
    del proto.metadata_props[:]
    for key, value in {META_KEY: json.dumps(meta), "classes": json.dumps(meta["classes"]),
                       "normalization": json.dumps(meta["normalization"])}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (f"mnistlab {meta['model']}: image (B,1,28,28) normalized -> logits "
                        f"(B,{len(meta['classes'])})")


def quantize_onnx(fp32: Path, path: Path, mode: str, calibration: np.ndarray | None,
                  ck: Checkpoint, x: np.ndarray | None) -> dict[str, Any]:
    """int8 ONNX with ONNX Runtime's tools (see the module docstring); returns parity."""
    onnx, ort = _onnx_modules()
    from onnxruntime import quantization as q

    tmp = path.with_name(f".{path.name}.tmp")
    # reduce_range: weights use 7 of their 8 bits. x86 CPUs without VNNI multiply uint8 by
    # int8 with an instruction (vpmaddubsw) that saturates pairs of products at int16; with
    # full-range weights that broke the top class of 3% of images (fast-cnn on mnist-5k:
    # 96.75% agreement with the float model, 99.5% with reduce_range, measured on AVX2).
    with _quiet():
        if mode == "dynamic":  # int8 weights; activations quantized per batch at run time
            q.quantize_dynamic(str(fp32), str(tmp), weight_type=q.QuantType.QInt8,
                               op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                               reduce_range=True)
        else:  # weights and activations int8; activation ranges from training images
            prep = path.with_name(f".{path.name}.prep.onnx")
            q.quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
            reader = _Calibration(calibration)
            try:
                q.quantize_static(str(prep), str(tmp), reader, quant_format=q.QuantFormat.QDQ,
                                  per_channel=True, weight_type=q.QuantType.QInt8,
                                  activation_type=q.QuantType.QUInt8, reduce_range=True,
                                  calibrate_method=q.CalibrationMethod.MinMax)
            finally:
                prep.unlink(missing_ok=True)
    proto = onnx.load(str(tmp))
    meta = export_meta(ck, mode)
    if calibration is not None:
        meta["calibration_images"] = len(calibration)
    _set_meta(proto, meta)
    onnx.save(proto, str(tmp))
    parity: dict[str, Any] = {}
    if x is not None:
        sess, ref = session(tmp, ort=ort), session(fp32, ort=ort)
        a, b = sess.run(None, {"image": x})[0], ref.run(None, {"image": x})[0]
        agreement = float((a.argmax(1) == b.argmax(1)).mean())
        parity = {"top1_agreement": agreement, "max_abs_diff": float(np.abs(a - b).max()),
                  "images": len(x)}
        one = sess.run(None, {"image": x[:1]})[0]  # the batch dimension is still dynamic
        if one.shape != (1, b.shape[1]) or agreement < INT8_AGREEMENT:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"parity check failed: the int8 model agrees with the float "
                              f"model on {agreement:.1%} of {len(x)} images (need "
                              f"{INT8_AGREEMENT:.0%})")
    tmp.replace(path)
    return parity


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over (N, 1, 28, 28) images."""

    def __init__(self, images: np.ndarray, batch: int = 64):
        self.batches = iter([{"image": images[i : i + batch]}
                             for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def export_torchscript(ck: Checkpoint, path: Path, x: np.ndarray | None) -> dict[str, Any]:
    import torch

    model = ck.model.cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        traced = torch.jit.trace(model, torch.zeros(1, 1, 28, 28), check_trace=False)
    parity = {}
    if x is not None:
        with _quiet():
            parity = _float_parity(lambda a: _torch_logits(traced, a),
                                   lambda a: _torch_logits(model, a), x)
    tmp = path.with_name(f".{path.name}.tmp")
    with _quiet():
        torch.jit.save(traced, str(tmp),
                       _extra_files={"mnistlab.json": json.dumps(export_meta(ck))})
    tmp.replace(path)
    return parity


# ------------------------------------------------------------------------------ inference


def session(path: str | Path, *, threads: int | None = None, ort: Any = None) -> Any:
    """An ONNX Runtime CPU session (``threads``: intra-op threads, None: ORT's default)."""
    if ort is None:
        ort = _onnx_modules()[1]
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types for unreadable models
        raise ExportError(f"{path}: ONNX Runtime cannot load it: {str(e).strip()[:200]}") from None


@dataclass
class OnnxCheckpoint(Checkpoint):
    """An exported ONNX model behind the ``Checkpoint`` surface that ``Predictor`` uses:
    ``model`` is the ONNX Runtime session, ``meta`` the metadata the export carried."""

    @property
    def engine(self) -> str:
        return "onnx"

    def logits(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = [self.model.run(None, {"image": x[i : i + batch_size]})[0]
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


def find_onnx(path: str | Path) -> Path:
    """A .onnx file, or a run directory -> its export/model.onnx."""
    p = Path(path)
    if p.is_dir():
        for candidate in (p / "export" / "model.onnx", p / "model.onnx"):
            if candidate.is_file():
                return candidate
        raise ExportError(f"{p}: no ONNX export found (looked for export/model.onnx); run "
                          f"`mnistlab export {p} --format onnx` first, or give the .onnx file")
    if not p.is_file():
        raise ExportError(f"{p}: no such ONNX file or run directory")
    return p


def load_onnx(path: str | Path, *, threads: int | None = None) -> OnnxCheckpoint:
    """An exported model (a .onnx file or a run directory with export/model.onnx) ready for
    ``Predictor``; its classes and normalization come from the file's own metadata."""
    onnx, ort = _onnx_modules()
    file = find_onnx(path)
    try:
        proto = onnx.load(str(file), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        meta = json.loads(props[META_KEY])
        if not isinstance(meta, dict) or not {"classes", "normalization", "model"} <= set(meta):
            raise KeyError("classes/normalization/model")
    except (KeyError, ValueError) as e:
        raise ExportError(f"{file}: not an ONNX model exported by mnistlab (its metadata lacks "
                          f"{e}); export it with `mnistlab export RUN --format onnx`") from None
    except Exception as e:  # onnx's DecodeError and friends: not an ONNX file
        raise ExportError(f"{file}: not a readable ONNX model ({type(e).__name__})") from None
    if Path(path).is_dir():
        _check_current(meta, Path(path), file)
    meta = {**meta, "engine": "onnx", "runtime": f"onnxruntime {ort.__version__}",
            "onnx_file": str(file)}
    return OnnxCheckpoint(session(file, threads=threads, ort=ort), meta, file)


def _check_current(meta: dict[str, Any], run: Path, file: Path) -> None:
    """An export found in a run directory must hold the run's checkpoint as it is now: the
    same weights and the same calibration (``mnistlab calibrate`` rewrites it in place)."""
    source = meta.get("source") or {}
    if not source.get("path"):
        return
    ck_json = run / "checkpoints" / Path(source["path"]).name
    if not ck_json.is_file():
        return  # the file was moved without its checkpoint: nothing to compare with
    try:
        now = json.loads(ck_json.read_text())
    except (OSError, ValueError):
        return  # loading the checkpoint itself would say what is wrong with it
    again = f"; run `mnistlab export {run}` again"
    if (now.get("weights") or {}).get("sha256") != source.get("weights_sha256"):
        raise ExportError(f"{file}: exported from other weights than {ck_json} holds now "
                          f"(trained again since?){again}")
    if now.get("calibration") != meta.get("calibration"):
        raise ExportError(f"{file}: exported before the calibration in {ck_json} changed "
                          f"(`mnistlab calibrate` since?){again}")
