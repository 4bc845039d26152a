"""ONNX and TorchScript export, ONNX Runtime int8 models, and --runtime onnx in predict/serve.

Tolerances (the same ones export() enforces): float exports reproduce PyTorch's logits within
1e-4 (max absolute difference); int8 models agree with the float model's top class on at
least 98% of images (here: the 1,000 mnist-5k test digits, where we ask for 99%).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'mnistlab[onnx]'")
pytest.importorskip("onnxscript", reason="needs the onnx extra: pip install 'mnistlab[onnx]'")

from mnistlab import data  # noqa: E402
from mnistlab.checkpoint import base_meta, load_checkpoint, save_checkpoint  # noqa: E402
from mnistlab.cli import main  # noqa: E402
from mnistlab.export import ExportError, export, load_onnx  # noqa: E402
from mnistlab.models import create_model, list_models  # noqa: E402
from mnistlab.predict import Predictor  # noqa: E402


def _test_digits(ck) -> np.ndarray:
    ds = data.load("mnist-5k", "test")
    return ck.normalize(ds.images.astype(np.float32) / 255.0), ds.labels


def _untrained_checkpoint(name: str, folder: Path) -> Path:
    """A seeded, untrained registry model saved as a checkpoint (for the export sweep)."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    ds = data.load("mnist-5k", "val")
    meta = base_meta(engine="torch", model=name, model_args=model.config,
                     classes=list(ds.classes), normalization={"mean": ds.mean, "std": ds.std},
                     dataset="mnist-5k", split={"val_size": -1, "seed": 0}, seed=0)
    return save_checkpoint(folder / name / "checkpoints" / "best", model, meta)


@pytest.fixture(scope="module")
def exported(runs_5k: dict) -> dict:
    """The trained fast-cnn exported once: float ONNX, int8 static and dynamic."""
    out = {"static": export(runs_5k["cnn"], "onnx", int8="static", log=lambda *_: None)}
    out["float"] = out["static"].files[0]
    out["dynamic"] = export(runs_5k["cnn"], "onnx", int8="dynamic", log=lambda *_: None)
    return out


# ------------------------------------------------------------------------------ the sweep


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_onnx_export_of_every_model_at_batch_sizes_1_and_7(name: str, tmp_path: Path) -> None:
    """Every registered torch model exports with a dynamic batch size: export() checks
    batch sizes 1, 7 and 256 on real digits itself; here batch 7 is run once more."""
    ck_path = _untrained_checkpoint(name, tmp_path)
    result = export(ck_path, "onnx", log=lambda *_: None)
    assert result.parity["max_abs_diff"] <= 1e-4 and result.parity["batch_sizes"][:2] == [1, 7]
    ck, onnx_ck = load_checkpoint(ck_path), load_onnx(result.path)
    x, _ = _test_digits(ck)
    for b in (1, 7):
        np.testing.assert_allclose(onnx_ck.logits(x[:b]), ck.logits(x[:b]), atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("name", [n if n in ("mlp", "fast-cnn") else
                                  pytest.param(n, marks=pytest.mark.slow) for n in list_models()])
def test_torchscript_export_of_every_model_at_batch_sizes_1_and_7(name: str,
                                                                  tmp_path: Path) -> None:
    ck_path = _untrained_checkpoint(name, tmp_path)
    result = export(ck_path, "torchscript", log=lambda *_: None)
    extra = {"mnistlab.json": ""}
    traced = torch.jit.load(str(result.path), _extra_files=extra)
    meta = json.loads(extra["mnistlab.json"])
    assert meta["model"] == name and meta["classes"] == [str(i) for i in range(10)]
    ck = load_checkpoint(ck_path)
    x, _ = _test_digits(ck)
    for b in (1, 7):
        with torch.inference_mode():
            got = traced(torch.from_numpy(x[:b])).numpy()
        np.testing.assert_allclose(got, ck.logits(x[:b]), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------ trained model


def test_onnx_export_of_a_trained_mlp(runs_5k: dict, tmp_path: Path) -> None:
    """The fast lane's ONNX check: a trained MLP, every mnist-5k test digit within 1e-4."""
    result = export(runs_5k["mlp"], "onnx", output=tmp_path / "mlp.onnx", log=lambda *_: None)
    ck, onnx_ck = load_checkpoint(runs_5k["mlp"]), load_onnx(result.path)
    x, _ = _test_digits(ck)
    assert np.abs(onnx_ck.logits(x) - ck.logits(x)).max() <= 1e-4
    assert onnx_ck.classes == ck.classes and onnx_ck.meta["model"] == "mlp"


@pytest.mark.slow
def test_onnx_matches_pytorch_on_real_digits(runs_5k: dict, exported: dict) -> None:
    ck = load_checkpoint(runs_5k["cnn"])
    onnx_ck = load_onnx(runs_5k["cnn"])  # a run directory finds export/model.onnx
    assert onnx_ck.path == exported["float"]
    x, labels = _test_digits(ck)
    ref, got = ck.logits(x), onnx_ck.logits(x)
    assert np.abs(got - ref).max() <= 1e-4  # over all 1,000 test digits
    # the file describes itself: classes, normalization and where it came from
    assert onnx_ck.classes == ck.classes
    assert onnx_ck.meta["normalization"] == ck.meta["normalization"]
    assert onnx_ck.meta["source"]["weights_sha256"] == ck.meta["weights"]["sha256"]
    import onnx

    proto = onnx.load(str(exported["float"]))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_onnx_agrees_with_the_float_model(runs_5k: dict, exported: dict, mode: str) -> None:
    ck = load_checkpoint(runs_5k["cnn"])
    x, labels = _test_digits(ck)
    ref = ck.logits(x)
    q = load_onnx(exported[mode].path)
    got = q.logits(x)
    agreement = float((got.argmax(1) == ref.argmax(1)).mean())
    assert agreement >= 0.99, agreement
    acc, ref_acc = (got.argmax(1) == labels).mean(), (ref.argmax(1) == labels).mean()
    assert abs(acc - ref_acc) <= 0.01
    assert q.meta["int8"] == mode
    # int8 weights make a smaller file (static: every layer; dynamic: the dense layers)
    assert exported[mode].bytes < 0.75 * exported["float"].stat().st_size


@pytest.mark.slow
def test_compressed_run_exports(runs_5k: dict, tmp_path: Path) -> None:
    """A pruned + int8 compact checkpoint exports like any other (what loads, exports)."""
    from mnistlab.compress import CompressConfig, compress

    run = compress(CompressConfig(str(runs_5k["mlp"]), prune=0.9, quantize="int8", epochs=0,
                                  sweep=(), name="p90", runs_dir=str(tmp_path),
                                  train_overrides={"threads": 1, "progress": False}),
                   log=lambda *_: None)
    result = export(run, "onnx", log=lambda *_: None)
    assert result.parity["max_abs_diff"] <= 1e-4
    assert load_onnx(run).meta["compression"]["prune"] == 0.9


# ------------------------------------------------------------------------------ consumers


def _digit_png(index: int) -> tuple[bytes, str]:
    """A mnist-5k test digit as a PNG a person might upload (dark ink on white)."""
    from PIL import Image

    ds = data.load("mnist-5k", "test")
    img = Image.fromarray(255 - ds.images[index]).resize((112, 112))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), ds.classes[ds.labels[index]]


@pytest.mark.slow
def test_predict_cli_with_onnx_runtime(runs_5k: dict, exported: dict, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    files = []
    for i in range(12):
        png, _ = _digit_png(i)
        files.append(tmp_path / f"d{i}.png")
        files[-1].write_bytes(png)
    outputs = {}
    for runtime in ("torch", "onnx"):
        code = main(["predict", str(runs_5k["cnn"]), *map(str, files), "--json",
                     "--runtime", runtime])
        assert code == 0
        outputs[runtime] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for a, b in zip(outputs["torch"], outputs["onnx"]):
        assert a["label"] == b["label"]
        assert abs(a["confidence"] - b["confidence"]) < 1e-4
    # an int8 file given directly
    assert main(["predict", str(exported["static"].path), str(files[0]), "--runtime",
                 "onnx"]) == 0
    assert capsys.readouterr().out.startswith(str(files[0]))


@pytest.mark.slow
def test_serve_with_onnx_runtime(runs_5k: dict, exported: dict) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mnistlab.serve.app import create_app

    app = create_app(runs_5k["cnn"], runtime="onnx")
    # (as a context manager: the app's lifespan stops its preprocessing workers at the end)
    with TestClient(app, base_url="http://localhost") as client:  # a Host it answers
        info = client.get("/api/model").json()
        assert info["engine"] == "onnx" and info["runtime"].startswith("onnxruntime")
        hits = 0
        for i in range(10):
            png, label = _digit_png(i)
            r = client.post("/api/predict", content=png, headers={"content-type": "image/png"})
            assert r.status_code == 200
            hits += r.json()["label"] == label
    assert hits >= 8
    torch_pred = Predictor(runs_5k["cnn"]).predict_one(_digit_png(0)[0])
    onnx_pred = app.state.predictor.predict_one(_digit_png(0)[0])
    assert abs(torch_pred.confidence - onnx_pred.confidence) < 1e-4


def test_a_stale_export_in_a_run_is_refused(runs_5k: dict, exported: dict,
                                            tmp_path: Path) -> None:
    """An export found in a run directory must hold the run's checkpoint as it is now: a
    calibration changed since, or other weights, is refused with the command that fixes it;
    the .onnx file named directly still loads (it carries its own metadata)."""
    run = shutil.copytree(runs_5k["cnn"], tmp_path / "run")
    assert load_onnx(run).meta["source"]["weights_sha256"]  # as exported: fine
    ck_json = run / "checkpoints" / "best.json"
    meta = json.loads(ck_json.read_text())
    ck_json.write_text(json.dumps({**meta, "calibration": {**(meta.get("calibration") or {}),
                                                           "temperature": 1.234}}))
    with pytest.raises(ExportError, match=r"calibration .* changed.*mnistlab export"):
        load_onnx(run)
    ck_json.write_text(json.dumps({**meta, "weights": {**meta["weights"], "sha256": "0" * 64}}))
    with pytest.raises(ExportError, match=r"other weights.*mnistlab export"):
        load_onnx(run)
    assert load_onnx(run / "export" / "model.onnx").meta["model"] == meta["model"]


def test_onnx_runtime_errors_are_clear(runs_5k: dict, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ExportError, match="no ONNX export found"):
        load_onnx(runs_5k["mlp"])
    bogus = tmp_path / "x.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="not a readable ONNX model"):
        load_onnx(bogus)
    code = main(["predict", str(runs_5k["mlp"]), str(bogus), "--runtime", "onnx"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no ONNX export found" in err[0]
    code = main(["predict", str(runs_5k["mlp"]), str(bogus), "--runtime", "tflite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "runtime: must be one of" in err[0]
