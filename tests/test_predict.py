"""Predictor and the ``mnistlab predict`` command (through its argparse wiring)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnistlab import data
from mnistlab.checkpoint import load_checkpoint
from mnistlab.cli import main
from mnistlab.predict import Predictor
from mnistlab.preprocess import preprocess_image

ROUND_TRIP_N = 1000


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run ``mnistlab ARGV`` through the real entry point (``mnistlab.cli.main``)."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_data_source() -> None:
    name = "mnist" if os.environ.get("MNISTLAB_DATA_DIR") else "mnist-5k"
    assert len(data.load(name, "test")) >= ROUND_TRIP_N


# ------------------------------------------------------------------------------ round trip


def render(digit: np.ndarray, how: int, rng: np.random.Generator) -> Image.Image:
    """A (28, 28) uint8 MNIST digit as a person's file might hold it."""
    img = Image.fromarray(digit)
    if how in (0, 3):  # upscaled, as a screenshot or a zoomed export
        k = int(rng.integers(2, 9))
        img = img.resize((28 * k, 28 * k), Image.Resampling.BICUBIC)
    if how in (1, 3):  # black ink on white paper
        img = Image.fromarray(255 - np.asarray(img))
    if how in (2, 3):  # somewhere on a larger canvas
        bg = 255 if how == 3 else 0
        w, h = img.size
        cw, ch = w + int(rng.integers(10, 3 * w)), h + int(rng.integers(10, 3 * h))
        canvas = Image.new("L", (cw, ch), bg)
        canvas.paste(img, (int(rng.integers(0, cw - w + 1)), int(rng.integers(0, ch - h + 1))))
        img = canvas.convert("RGB") if how == 3 else canvas
    return img


@pytest.mark.slow  # the fast lane's budget (pytest -m 'not slow', ~2 min)
def test_round_trip_matches_tensor_accuracy(
    trained_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = load_checkpoint(trained_checkpoint)
    test = data.load(ckpt.meta["dataset"], "test")
    rng = np.random.default_rng(0)
    idx = rng.choice(len(test), ROUND_TRIP_N, replace=False)
    images, labels = test.images[idx], test.labels[idx]

    logits = ckpt.logits(ckpt.normalize(images.astype(np.float32) / 255))
    tensor_acc = float((logits.argmax(1) == labels).mean())
    if ckpt.meta["dataset"] == "mnist":
        assert tensor_acc >= 0.97, "the fixture model is too weak for a meaningful comparison"

    folder = tmp_path / "digits"
    for i, (digit, label) in enumerate(zip(images, labels)):
        sub = folder / f"style{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        render(digit, i % 4, rng).save(sub / f"{i:04d}_label{label}.png")

    code, out, err = run_cli(["predict", str(trained_checkpoint), str(folder), "--json"], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == ROUND_TRIP_N
    correct = {s: [] for s in range(4)}
    for r in records:
        name = Path(r["file"]).stem
        correct[int(Path(r["file"]).parent.name[-1])].append(r["label"] == name.split("label")[1])
    cli_acc = float(np.mean([c for v in correct.values() for c in v]))
    per_style = {s: round(float(np.mean(v)), 3) for s, v in correct.items()}
    print(
        f"tensor accuracy {tensor_acc:.3f}, files through the CLI {cli_acc:.3f}, "
        f"per style (upscaled, inverted, shifted, all three) {per_style}"
    )
    assert abs(cli_acc - tensor_acc) <= 0.01, (tensor_acc, cli_acc, per_style)
    for s, acc in per_style.items():  # no rendering style is broken on its own
        assert acc >= tensor_acc - 0.03, (s, per_style)


# ------------------------------------------------------------------------------ Predictor


@pytest.fixture(scope="module")
def predictor(trained_checkpoint: Path) -> Predictor:
    return Predictor.load(trained_checkpoint, threshold=0.5, top_k=3)


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    name = "mnist" if os.environ.get("MNISTLAB_DATA_DIR") else "mnist-5k"
    return data.load(name, "test")


def test_predictor_outputs(predictor: Predictor, digits: data.Dataset) -> None:
    srcs = [
        png_bytes(Image.fromarray(255 - digits.images[0])),  # bytes
        Image.fromarray(digits.images[1]),
    ]  # a PIL image
    preds = predictor.predict(srcs, top_k=4)
    assert len(preds) == 2
    for p, src in zip(preds, srcs):
        assert p.label in predictor.classes and p.label == predictor.classes[p.index]
        assert p.probabilities.shape == (10,)
        assert abs(float(p.probabilities.sum()) - 1) < 1e-4
        assert len(p.top_k) == 4 and p.top_k[0] == (p.label, p.confidence)
        assert [q for _, q in p.top_k] == sorted((q for _, q in p.top_k), reverse=True)
        assert p.unsure == (p.confidence < 0.5)
        assert p.input.shape == (28, 28) and p.input.dtype == np.float32
        np.testing.assert_array_equal(p.input, preprocess_image(src))
    d = preds[0].to_dict(predictor.classes, with_input=True)
    assert set(d["probabilities"]) == set(predictor.classes)
    assert np.asarray(d["input"]).shape == (28, 28)
    assert predictor.predict([]) == []
    assert len(predictor.predict_one(srcs[0], top_k=99).top_k) == 10  # clamped


def test_threshold_flags_unsure(trained_checkpoint: Path, digits: data.Dataset) -> None:
    p = Predictor(trained_checkpoint, threshold=1.0)  # a path works as well as a Checkpoint
    assert p.predict_one(Image.fromarray(digits.images[0])).unsure
    with pytest.raises(ValueError):
        Predictor.load(trained_checkpoint, threshold=1.5)


# ------------------------------------------------------------------------------ CLI


def test_cli_text_top_k_threshold_and_save_input(
    trained_checkpoint: Path, tmp_path: Path, digits: data.Dataset, capsys: pytest.CaptureFixture
) -> None:
    files = []
    for i in range(3):
        f = tmp_path / f"d{i}.png"
        Image.fromarray(255 - digits.images[i]).save(f)
        files.append(str(f))
    save = tmp_path / "seen"
    code, out, err = run_cli(
        [
            "predict",
            str(trained_checkpoint),
            *files,
            "--top-k",
            "2",
            "--threshold",
            "1.0",
            "--save-input",
            str(save),
        ],
        capsys,
    )
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    for line, f in zip(lines, files):
        assert line.startswith(f"{f}: ") and "(unsure)" in line and line.count("%") == 3
    saved = sorted(save.iterdir())
    assert [s.name for s in saved] == ["d0.png", "d1.png", "d2.png"]
    seen = np.asarray(Image.open(saved[0]), dtype=np.float32) / 255
    np.testing.assert_allclose(seen, preprocess_image(files[0]), atol=1 / 255)


def test_cli_bad_files_are_reported_and_the_rest_predicted(
    trained_checkpoint: Path, tmp_path: Path, digits: data.Dataset, capsys: pytest.CaptureFixture
) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(digits.images[0]).save(good)
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    Image.new("L", (50, 50), 255).save(tmp_path / "blank.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    bad = ["notes.png", "cut.png", "blank.png", "empty.jpg", "missing.png"]
    argv = ["predict", str(trained_checkpoint), str(good), *(str(tmp_path / b) for b in bad)]

    code, out, err = run_cli(argv, capsys)
    assert code == 1
    assert out.startswith(f"{good}: ")
    for name in bad:
        assert f"{tmp_path / name}: error: " in err
    assert "blank" in err and "not an image" in err and "no such file" in err
    assert "5 of 6 image(s) could not be predicted" in err

    code, out, err = run_cli([*argv, "--json"], capsys)
    assert code == 1
    recs = [json.loads(line) for line in out.splitlines()]
    assert len(recs) == 6 and "label" in recs[0]
    assert all("error" in r for r in recs[1:])


def test_cli_folder_and_bad_checkpoint(
    trained_checkpoint: Path, tmp_path: Path, digits: data.Dataset, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.fromarray(digits.images[0]).save(tmp_path / "a" / "b" / "x.bmp")
    Image.fromarray(digits.images[1]).convert("RGB").save(tmp_path / "a" / "y.jpg", quality=95)
    (tmp_path / "a" / "readme.txt").write_text("skipped: not an image extension")
    code, out, _ = run_cli(["predict", str(trained_checkpoint), str(tmp_path / "a")], capsys)
    assert code == 0 and len(out.splitlines()) == 2

    (tmp_path / "none").mkdir()
    code, _, err = run_cli(["predict", str(trained_checkpoint), str(tmp_path / "none")], capsys)
    assert code == 1 and "no image files" in err

    code, _, err = run_cli(["predict", str(tmp_path), str(tmp_path / "a")], capsys)
    assert code == 2 and err.startswith("mnistlab: error: ") and len(err.splitlines()) == 1
    code, _, err = run_cli(
        ["predict", str(trained_checkpoint), str(tmp_path / "a"), "--threshold", "2"], capsys
    )
    assert code == 2 and "--threshold" in err
