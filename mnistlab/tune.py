"""Hyper-parameter search on the validation split, with Optuna.

    mnistlab tune RECIPE --space SPACE.toml --trials N [--timeout S] [--storage URL]

    runs/<study>/study.db          the Optuna storage (SQLite) unless --storage names another
    runs/<study>/trial-0007/       every trial is a normal run directory (`mnistlab runs`);
                                   only the best one gets its report (`mnistlab report RUN`)
    runs/<study>/report.md         the table of trials, the best trial, the plots below
    runs/<study>/best.toml         the best config as a recipe, its [result] saying how found
    runs/<study>/plots/            history.png (optimization history), importances.png

A trial is the recipe (plus flags) with the sampled values, trained by ``training.train``
with ``eval_test=False``: the search sees the validation split only, and the objective is
the validation accuracy (or loss) of the trial's best checkpoint. After every epoch the
trial reports its validation score, and the pruner (median or Hyperband) stops trials that
fall behind (run.json status "pruned"). TPE samples the space.

The study lives in Optuna's storage, so any number of ``mnistlab tune`` processes on any
number of machines can share it (``--storage postgresql://...``, docs/tuning.md). Each
worker sends a heartbeat while it trains; a worker that dies (a SIGKILL, a lost machine)
stops beating, and the next worker to look marks its trial failed and queues it again
(``--retries``). ``--trials N`` counts the study's finished trials, whoever ran them.

The search space is a TOML file: one table per config field, or per model argument under
``[model_args]``::

    lr = { low = 1e-3, high = 3e-2, log = true }     # a float range, sampled on a log scale
    epochs = { low = 2, high = 6 }                    # an int range (int bounds; step = 1)
    batch_size = { choices = [128, 256, 512] }        # a choice (any TOML values)
    [model_args]
    widths = { choices = [[16, 32], [32, 64]] }
    dense = { low = 64, high = 256, step = 64 }

Everything is checked before any trial runs: the fields and model arguments exist, each
range holds values (low < high; log ranges above 0), every value fits its field, the data
are there and the storage opens; each is one ConfigError naming what is wrong.
"""

from __future__ import annotations

import json
import math
import socket
import time
import tomllib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import FIELDS, TrainConfig, check_value, field_kind, to_toml
from .errors import ConfigError, MnistlabError, TrainingDiverged

METRICS = {"val_acc": "maximize", "val_loss": "minimize"}
PRUNERS = ("median", "hyperband", "none")
# settings that may differ between the workers of one study (they do not change what a
# trial is): each worker trains with its own
MACHINE_FIELDS = ("name", "runs_dir", "data_dir", "device", "threads", "progress",
                  "tensorboard", "eval_test")

__all__ = ["Param", "load_space", "check_space", "open_storage", "tune", "write_report",
           "load_study", "TuneResult", "METRICS", "PRUNERS"]


# ------------------------------------------------------------------------------ the space


@dataclass(frozen=True)
class Param:
    """One searched setting: a config field ("lr") or a model argument ("model_args.dense")."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None  # JSON texts of the values (Optuna's choices are scalars)

    @property
    def is_int(self) -> bool:
        return self.choices is None and isinstance(self.low, int) and isinstance(self.high, int)

    def values_to_check(self) -> list[Any]:
        if self.choices is not None:
            return [json.loads(c) for c in self.choices]
        return [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return json.loads(trial.suggest_categorical(self.name, list(self.choices)))
        if self.is_int:
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1,
                                     log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name} in {{{', '.join(self.choices)}}}"
        scale = ", log" if self.log else f", step {self.step}" if self.step else ""
        return f"{self.name} in [{self.low}, {self.high}{scale}]"


_SPEC_KEYS = {"low", "high", "log", "step", "choices"}


def load_space(path: str | Path) -> list[Param]:
    """The search space of a TOML file (see the module docstring); ConfigError("space: ...")
    for an unknown field, an empty range or a malformed entry."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"space: cannot read {path} ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"space: {path} is not valid TOML ({e})") from None
    entries: list[tuple[str, Any]] = []
    for key, spec in data.items():
        if key == "model_args":
            if not isinstance(spec, dict) or not spec:
                raise ConfigError("space: [model_args] must hold one table per model argument")
            entries += [(f"model_args.{k}", v) for k, v in spec.items()]
        elif key not in FIELDS:
            raise ConfigError(f"space: unknown field {key!r} in {path}; valid fields: "
                              f"{', '.join(FIELDS)} (model arguments go under [model_args])")
        else:
            entries.append((key, spec))
    if not entries:
        raise ConfigError(f"space: {path} searches nothing; give at least one field")
    return [_param(name, spec) for name, spec in entries]


def _param(name: str, spec: Any) -> Param:
    if not isinstance(spec, dict) or not spec or set(spec) - _SPEC_KEYS:
        raise ConfigError(f"space: {name}: expected {{ low = .., high = .. [, log = true] "
                          f"[, step = ..] }} or {{ choices = [..] }}, got {spec!r}")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list):
            raise ConfigError(f"space: {name}: choices must be a list, alone in its table")
        if not choices:
            raise ConfigError(f"space: {name}: empty choices: give at least one value")
        texts = tuple(json.dumps(c, sort_keys=True) for c in choices)
        if len(set(texts)) != len(texts):
            raise ConfigError(f"space: {name}: choices repeat a value: {choices}")
        return Param(name, choices=texts)
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"space: {name}: a range needs both low and high")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    numbers = [v for v in (low, high, step) if v is not None]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in numbers) or not isinstance(log, bool):
        raise ConfigError(f"space: {name}: low, high and step must be numbers and log true or "
                          f"false, got {spec!r}")
    is_field_int = name in FIELDS and field_kind(name) is int
    if name in FIELDS and field_kind(name) not in (int, float):
        raise ConfigError(f"space: {name}: a range needs a numeric field; give choices instead")
    if is_field_int and not all(isinstance(v, int) for v in numbers):
        raise ConfigError(f"space: {name}: an integer field needs integer low, high and step, "
                          f"got {spec!r}")
    if name in FIELDS and field_kind(name) is float:
        low, high = float(low), float(high)
    if not low < high:
        raise ConfigError(f"space: {name}: empty range: low ({low}) must be below high "
                          f"({high}); a single value belongs in the recipe or a flag")
    if log and low <= 0:
        raise ConfigError(f"space: {name}: a log range must stay above 0, got low = {low}")
    if step is not None and (step <= 0 or log or step > high - low):
        raise ConfigError(f"space: {name}: step must be > 0, at most high - low, and not "
                          f"with log, got {step!r}")
    return Param(name, low, high, log, step)


def apply(base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """``base`` with sampled values (``model_args.K`` keys merged into its model_args)."""
    fields_ = {k: v for k, v in values.items() if not k.startswith("model_args.")}
    args = {k.removeprefix("model_args."): v for k, v in values.items()
            if k.startswith("model_args.")}
    if args:
        fields_["model_args"] = {**base.model_args, **fields_.get("model_args", {}), **args}
    return base.replace(**fields_)


def base_params(space: list[Param], base: TrainConfig) -> dict[str, Any] | None:
    """The base recipe's own values of the searched settings, as Optuna stores them (a
    choice as its JSON text), or None when one lies outside the space."""
    cfg = json.loads(json.dumps(base.to_dict()))
    out: dict[str, Any] = {}
    for p in space:
        key = p.name.removeprefix("model_args.")
        value = (cfg.get("model_args") or {}).get(key) if key != p.name else cfg.get(p.name)
        if p.choices is not None:
            out[p.name] = json.dumps(value, sort_keys=True)
            if out[p.name] not in p.choices:
                return None
        elif isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not p.low <= value <= p.high or (p.is_int and value != int(value)):
            return None
        else:
            out[p.name] = int(value) if p.is_int else float(value)
    return out


def check_space(space: list[Param], base: TrainConfig) -> None:
    """Every value a param can take fits its field (bounds, choices, type); every model
    argument is one the model takes. Settings that depend on each other (``momentum`` only
    with sgd) are checked per trial, as the trial's config is built."""
    from .engines import engine_for_model

    engine = engine_for_model(base.model)
    for p in space:
        for value in p.values_to_check():
            if p.name.startswith("model_args."):
                args = {**base.model_args, p.name.removeprefix("model_args."): value}
                try:
                    engine.build(base.model, args, 10, seed=0)
                except ConfigError as e:
                    raise ConfigError(f"space: {p.name} = {json.dumps(value)}: "
                                      f"{str(e).removeprefix('model_args: ')}") from None
            else:
                try:
                    check_value(p.name, value)
                except ConfigError as e:
                    raise ConfigError(f"space: {e}") from None
    if any(p.name in MACHINE_FIELDS or p.name == "nproc" for p in space):
        bad = next(p.name for p in space if p.name in MACHINE_FIELDS or p.name == "nproc")
        raise ConfigError(f"space: {bad}: a machine setting, not a hyper-parameter; set it "
                          "with a flag")


# ------------------------------------------------------------------------------ storage


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("tune: needs Optuna: pip install 'mnistlab[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def shown_url(url: str) -> str:
    """A storage URL with its password hidden."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: shown as given
        return url


def open_storage(url: str, *, heartbeat: int = 30, retries: int = 1) -> Any:
    """Optuna's RDB storage at ``url`` (sqlite:///FILE, postgresql://USER:PASS@HOST/DB, ...)
    with heartbeats: a trial whose worker has not beaten for 3 heartbeats is failed, and
    queued again up to ``retries`` times. ConfigError("storage: ...") if it cannot open."""
    optuna = _optuna()
    if url.startswith(("postgresql://", "postgres://")):  # SQLAlchemy 2.1 would pick psycopg
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]  # 3; the tune extra has psycopg2
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    elif url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 60}  # seconds to wait for another writer's lock
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                grace_period=3 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=retries))
        except ImportError:
            raise ConfigError(f"storage: {shown_url(url)} needs its database driver (pip "
                              "install 'mnistlab[tune]' brings psycopg2 for PostgreSQL)") from None
        except Exception as e:  # sqlalchemy: a bad URL, an unknown dialect, no server, bad login
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            # Workers started together on a fresh database race to create Optuna's tables;
            # the loser gets a duplicate key or "already exists" and finds them next time.
            racing = type(e).__name__ in ("IntegrityError", "ProgrammingError") and (
                "duplicate key" in first or "already exists" in first)
            if not racing or attempt == 3:
                raise ConfigError(f"storage: cannot open {shown_url(url)}: {first}") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------ the search


@dataclass
class TuneResult:
    study: Any  # optuna.Study
    directory: Path
    report: Path | None = None
    best: Path | None = None  # best.toml


class _Pruned(Exception):
    """Raised by a trial's epoch hook; the run records status "pruned" (run.py)."""

    run_status = "pruned"


def tune(base: TrainConfig, space: list[Param], *, trials: int, study_name: str,
         storage: str | None = None, timeout: float | None = None, metric: str = "val_acc",
         pruner: str = "median", heartbeat: int = 30, retries: int = 1,
         sampler_seed: int | None = None, command: str = "", space_path: str = "",
         base_trial: bool = True, log: Callable[[str], None] = print,
         train_log: Callable[[str], None] | None = None) -> TuneResult:
    """Run trials of ``base`` + ``space`` until the study holds ``trials`` finished ones (or
    ``timeout`` seconds pass), then write the study's report. See the module docstring.

    ``base_trial``: the base recipe's own values are queued as a trial (once per study, when
    they lie in the space), so the search is measured against where it started."""
    from . import training

    optuna = _optuna()
    if metric not in METRICS:
        raise ConfigError(f"metric: must be one of {', '.join(METRICS)}, got {metric!r}")
    if pruner not in PRUNERS:
        raise ConfigError(f"pruner: must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    if trials < 1 or (timeout is not None and timeout <= 0) or heartbeat < 1 or retries < 0:
        raise ConfigError("trials: need trials >= 1, timeout > 0, heartbeat >= 1 s and "
                          f"retries >= 0; got {trials}, {timeout}, {heartbeat}, {retries}")
    if base.nproc != 1:
        raise ConfigError("nproc: tuning trials train in one process each; start more "
                          "`mnistlab tune` workers instead (docs/tuning.md)")
    if not study_name or "/" in study_name or study_name in (".", ".."):
        raise ConfigError(f"study: must be a plain folder name, got {study_name!r}")

    # --- everything checked before any trial runs: space, data, storage
    check_space(space, base)
    training.load_splits(base)  # DataError now rather than in every trial
    directory = Path(base.runs_dir) / study_name
    if storage:  # a shared storage that does not open leaves nothing behind here
        store = open_storage(storage, heartbeat=heartbeat, retries=retries)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"runs_dir: cannot make the study folder {directory} "
                          f"({e.strerror})") from None
    url = storage or f"sqlite:///{(directory / 'study.db').resolve()}"
    if not storage:
        store = open_storage(url, heartbeat=heartbeat, retries=retries)
    definition = {"space": [vars(p) | {"choices": p.choices and list(p.choices)}
                            for p in space],
                  "base": {k: v for k, v in base.to_dict().items() if k not in MACHINE_FIELDS},
                  "metric": metric}
    definition = json.loads(json.dumps(definition))  # as the storage will return it
    sampler = optuna.samplers.TPESampler(
        seed=sampler_seed, multivariate=True, constant_liar=True,
        n_startup_trials=max(4, min(10, trials // 3)))
    # median: a trial below the median of earlier trials at the same epoch stops, once 5
    # trials have finished and after the first third of its epochs (early epochs of one-cycle
    # or warm-up schedules say little about the end)
    prune = {"median": lambda: optuna.pruners.MedianPruner(
                 n_startup_trials=5, n_warmup_steps=base.epochs // 3),
             "hyperband": lambda: optuna.pruners.HyperbandPruner(
                 min_resource=1, max_resource=max(base.epochs, 1), reduction_factor=3),
             "none": optuna.pruners.NopPruner}[pruner]()
    try:  # creating is atomic in the storage: of workers started at once, one creates it
        study = optuna.create_study(storage=store, study_name=study_name, sampler=sampler,
                                    pruner=prune, direction=METRICS[metric])
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=store, study_name=study_name, sampler=sampler,
                                  pruner=prune)
        created = False  # (a different metric is refused below, with the definition)
    known = study.user_attrs.get("definition")
    if known is None:
        study.set_user_attr("definition", definition)
        study.set_user_attr("command", command)
        study.set_user_attr("space_path", space_path)
    elif known != definition:
        what = next(k for k in definition if definition[k] != known.get(k))
        raise ConfigError(f"study: {study_name!r} in {shown_url(url)} was started with another "
                          f"{what} (its trials would not compare); use another --study")
    log(f"study {study_name!r} in {shown_url(url)}: {metric} ({METRICS[metric]}), {pruner} "
        f"pruning, trials in {directory}")
    log("search: " + "; ".join(p.describe() for p in space))
    if base_trial and created:  # only the worker that created the study: queued once
        params = base_params(space, base)
        if params is None:
            log("the base recipe's values lie outside the space: not queued as a trial")
        else:
            study.enqueue_trial(params, user_attrs={"base": True})
            log("the base recipe's own values are queued as a trial")

    # --- one trial: the recipe with the sampled values, trained on train, scored on val
    def objective(trial: Any) -> float:
        values = {p.name: p.suggest(trial) for p in space}
        cfg = apply(base, values).replace(name=f"trial-{trial.number:04d}",
                                          runs_dir=str(directory), eval_test=False,
                                          progress=False)
        trial.set_user_attr("run_dir", str(directory / cfg.name))
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("config", {k: v for k, v in json.loads(json.dumps(cfg.to_dict()))
                                       .items() if k not in MACHINE_FIELDS})
        epochs = [0]

        def on_epoch_end(epoch: int, rec: dict) -> None:
            epochs[0] = epoch + 1
            trial.report(rec[metric], step=epoch + 1)
            if epoch + 1 < cfg.epochs and trial.should_prune():  # the last epoch: it is done
                raise _Pruned(f"pruned after epoch {epoch + 1}: {metric} {rec[metric]:.4f}")

        quiet = train_log or (lambda *_: None)
        t0 = time.perf_counter()
        run_dir = directory / cfg.name
        try:
            training.train(cfg, hooks=training.Hooks(on_epoch_end=on_epoch_end), log=quiet,
                           report=False)  # plots would cost a short trial most of its time
        except _Pruned as e:
            _train_seconds(trial, run_dir)
            log(f"trial {trial.number}: {e} ({time.perf_counter() - t0:.1f} s)  "
                + _shown(values))
            raise optuna.TrialPruned(str(e)) from None
        except TrainingDiverged:  # a trial whose loss exploded was a bad one: pruned
            _train_seconds(trial, run_dir)
            trial.set_user_attr("diverged", True)
            log(f"trial {trial.number}: diverged after {epochs[0]} epoch(s)  " + _shown(values))
            raise optuna.TrialPruned("diverged") from None
        except ConfigError as e:  # settings that do not go together (momentum with adam...)
            log(f"trial {trial.number}: failed: {e}  " + _shown(values))
            raise
        best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
        value = float(best["metrics"][metric])
        trial.set_user_attr("epochs", epochs[0])
        seconds = _train_seconds(trial, run_dir)
        log(f"trial {trial.number}: {metric} {value:.4f} after {epochs[0]} epoch(s), "
            f"{seconds:.1f} s of training ({time.perf_counter() - t0:.1f} s in all)  "
            + _shown(values))
        return value

    deadline = None if timeout is None else time.monotonic() + timeout
    if len(_counted(study)) < trials:
        study.optimize(objective, timeout=timeout, catch=(ConfigError,),
                       callbacks=[_StopAt(trials)])
    if deadline is None or time.monotonic() < deadline:
        _finish_stale(study, objective, heartbeat)
    result = TuneResult(study, directory)
    result.report, result.best = write_report(study, directory, url=shown_url(url), log=log)
    best_run = Path(study.best_trial.user_attrs["run_dir"]) if result.best else None
    if best_run is not None and best_run.is_dir() and not (best_run / "report.md").exists():
        from .report import write_report as write_run_report  # the best trial's own report

        write_run_report(best_run, eval_test=False, log=lambda *_: None)
    return result


def _train_seconds(trial: Any, run_dir: Path) -> float:
    """The trial's training time (its run.json: the loop only, evaluation and checkpoints
    excluded), recorded with the trial: what a configuration costs."""
    try:
        seconds = float(json.loads((run_dir / "run.json").read_text())["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return float("nan")
    trial.set_user_attr("train_seconds", round(seconds, 3))
    return seconds


def _shown(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={_cell(v)}" for k, v in values.items())


def _counted(study: Any) -> list[Any]:
    """The finished trials that count toward --trials: complete, pruned, and failed ones
    that were not queued again (a retried trial counts through its retry)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    with warnings.catch_warnings():  # "experimental" since Optuna 2.8
        warnings.simplefilter("ignore")
        retried = {Retry.retried_trial_number(t) for t in trials}
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and t.number not in retried)]


class _StopAt:
    """Stops this worker once the study (all workers together) holds ``n`` counted trials.
    Workers that are mid-trial then finish it, so a study can end a few trials above n."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, study: Any, trial: Any) -> None:
        if len(_counted(study)) >= self.n:
            study.stop()


def _finish_stale(study: Any, objective: Callable, heartbeat: int) -> None:
    """Before reporting: give a trial whose worker died (it stays "running" with no
    heartbeat) the grace period to be failed, and run the retries that queues."""
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    deadline = time.monotonic() + 5 * heartbeat  # grace (3 heartbeats) plus slack
    while time.monotonic() < deadline:
        fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        waiting = states.count(TrialState.WAITING)
        if waiting:
            study.optimize(objective, n_trials=waiting, catch=(ConfigError,))
            continue
        if TrialState.RUNNING not in states:
            return
        time.sleep(heartbeat)


# ------------------------------------------------------------------------------ the report


def load_study(runs_dir: str, name: str, storage: str | None = None) -> tuple[Any, Path, str]:
    """(study, its folder, its storage URL shown) of an existing study."""
    directory = Path(runs_dir) / name
    if not storage and not (directory / "study.db").is_file():
        raise ConfigError(f"study: no study database {directory / 'study.db'}")
    url = storage or f"sqlite:///{(directory / 'study.db').resolve()}"
    try:
        study = _optuna().load_study(study_name=name, storage=open_storage(url))
    except KeyError:
        raise ConfigError(f"study: no study {name!r} in {shown_url(url)}") from None
    return study, directory, shown_url(url)


def write_report(study: Any, directory: Path, *, url: str = "",
                 log: Callable[[str], None] | None = None) -> tuple[Path, Path | None]:
    """report.md (the trials, the best one, plots) and best.toml in the study folder; the
    second path is None when no trial has completed yet."""
    import datetime as dt

    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    attrs = study.user_attrs
    metric = attrs.get("definition", {}).get("metric", "val_acc")
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    names = [p["name"] for p in attrs.get("definition", {}).get("space", [])]
    lines = [f"# Study {study.study_name}", "",
             f"- objective: {metric} on the validation split ({study.direction.name.lower()}); "
             "the trials never see the test split (eval_test off)",
             f"- storage: `{url}`" if url else "- storage: (not recorded)",
             f"- started by: `{attrs.get('command') or '(unknown)'}`",
             f"- search space: `{attrs.get('space_path') or '(unknown)'}`",
             "- trials: " + ", ".join(f"{n} {s}" for s, n in states.items() if n), ""]
    best_path = None
    if complete:
        best = study.best_trial
        lines += [f"Best: trial {best.number}, {metric} {best.value:.4f}, "
                  + _shown(_params(best)), "",
                  "Train it on its own (the test split evaluated once, at the end): "
                  f"`mnistlab train --config {directory / 'best.toml'}`", ""]
        best_path = directory / "best.toml"
        cfg = TrainConfig(**{**best.user_attrs["config"], "eval_test": True}).replace(
            name="", runs_dir="runs")
        counted = len(_counted(study))
        best_path.write_text(to_toml(
            cfg, description=f"found by mnistlab tune (study {study.study_name}, trial "
                             f"{best.number} of {counted}): {metric} {best.value:.4f}",
            comments=["Every setting below was chosen on the validation split: the search "
                      "never saw the test split.", f"Search space: {_space_line(study)}"],
            result={metric: round(best.value, 6), "metric": f"{metric}, validation split",
                    "study": study.study_name, "trial": best.number, "trials": counted,
                    "found": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "command": attrs.get("command", "")}))
    lines += ["Seconds: `training s` is the training loop alone (run.json); `trial s` all of "
              "the trial (data, validation, checkpoints, its report). A pruned trial's "
              f"{metric} is its last reported epoch's.", "",
              "| trial | state | " + metric + " | epochs | training s | trial s | "
              + " | ".join(names) + " | run |", "|---" * (7 + len(names)) + "|"]
    for t in trials:
        value = t.value if t.value is not None else (
            t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        state = t.state.name.lower() + (" (diverged)" if t.user_attrs.get("diverged") else "")
        state += " (the base)" if t.user_attrs.get("base") else ""
        seconds = t.duration.total_seconds() if t.duration else None
        epochs = t.user_attrs.get("epochs") or (max(t.intermediate_values)
                                                if t.intermediate_values else "")
        params = _params(t)
        train_s = t.user_attrs.get("train_seconds")
        cells = [str(t.number), state, "" if value is None else f"{value:.4f}", str(epochs),
                 "" if train_s is None else f"{train_s:.1f}",
                 "" if seconds is None else f"{seconds:.1f}"]
        cells += [_cell(params.get(n)) for n in names]
        cells.append(f"`{t.user_attrs.get('host', '')}:{Path(t.user_attrs['run_dir']).name}`"
                     if "run_dir" in t.user_attrs else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Plots", ""]
    for name, title, ok in _plots(study, directory / "plots", metric):
        lines.append(f"![{title}](plots/{name})" if ok else f"- {title}: {name}")
    report = directory / "report.md"
    report.write_text("\n".join(lines) + "\n")
    if log:
        log(f"report: {report}")
    return report, best_path


def _params(trial: Any) -> dict[str, Any]:
    # choices are stored as JSON texts (Optuna's choices must be scalars)
    return {k: json.loads(v) if isinstance(v, str) else v for k, v in trial.params.items()}


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return v if isinstance(v, str) else json.dumps(v)


def _space_line(study: Any) -> str:
    space = study.user_attrs.get("definition", {}).get("space", [])
    return "; ".join(Param(**{**p, "choices": p["choices"] and tuple(p["choices"])}).describe()
                     for p in space)


def _plots(study: Any, folder: Path, metric: str) -> list[tuple[str, str, bool]]:
    """Optimization history and parameter importances (Optuna's matplotlib plots); a plot
    that cannot be drawn yet (too few trials) is named with the reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, title, draw in (("history.png", "optimization history", vis.plot_optimization_history),
                              ("importances.png", "parameter importances",
                               vis.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            if name == "history.png":
                ax.set_ylabel(f"{metric} (validation)")
            fig.set_size_inches(7, 4.2)
            fig.savefig(folder / name, dpi=100, bbox_inches="tight")
            plt.close(fig)
            out.append((name, title, True))
        except (ValueError, RuntimeError, ZeroDivisionError, MnistlabError) as e:
            out.append((f"not drawn ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                        title, False))
    return out
