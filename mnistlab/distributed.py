"""Several processes training one model: which rank this process is, and starting the ranks.

Data-parallel training (``--nproc``, torch engine) runs one process per rank:

    mnistlab train --nproc N ...                     launch() starts N ranks on this machine
    torchrun --nproc-per-node N --nnodes M ... -m mnistlab train ...   torchrun starts them

Either way each rank finds RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE in its
environment (``env_context``) and runs the same ``training.train``: every rank trains on
its shard of each batch, and only rank 0 writes the run directory. The torch side (the
process group, DDP, batch norm synchronized over the ranks) is ``engines/torch_ddp.py``;
this module imports no torch, so a NumPy-engine run never pulls it in.

``launch`` starts each rank as ``python -c`` with its call in a JSON file, and a ``file://``
rendezvous in the same temporary folder, so there is no port to pick (or to collide on);
torchrun uses its own (``env://``). A rank started by ``launch`` dies with the launcher
(Linux ``PR_SET_PDEATHSIG``), so killing ``mnistlab train --nproc N``, even with SIGKILL,
leaves no rank training (and writing) behind; ``--resume`` continues the run.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import errors

ENV_INIT = "MNISTLAB_DIST_INIT"  # the rendezvous URL of launch()'s ranks (a file:// URL)

__all__ = ["Context", "env_context", "launch"]


@dataclass(frozen=True)
class Context:
    """This process's place among the ranks of one data-parallel run."""

    rank: int  # 0..world_size-1 over all machines; rank 0 writes the run directory
    world_size: int
    local_rank: int  # on this machine: picks the GPU (cuda:local_rank)
    local_world_size: int  # ranks on this machine: they share its CPU cores
    init_method: str  # "env://" (torchrun) or "file://..." (launch)

    @property
    def primary(self) -> bool:
        return self.rank == 0

    @property
    def torchrun(self) -> bool:
        """Started by torchrun (or another launcher), not by ``launch`` (``--nproc``)."""
        return self.init_method == "env://"


def env_context() -> Context | None:
    """This process's rank, as torchrun or ``launch`` set it in the environment; None for a
    single process (no WORLD_SIZE, or a world of one)."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env["RANK"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except (KeyError, ValueError) as e:
        raise errors.ConfigError(f"nproc: WORLD_SIZE is set but the rank is not ({e}); start "
                                 "the ranks with torchrun or `mnistlab train --nproc N`") from None
    return Context(rank, world, local_rank, local_world, env.get(ENV_INIT, "env://"))


# ------------------------------------------------------------------------------ launching


def launch(target: str, args: list[Any], nproc: int,
           log: Callable[[str], None] | None = None) -> None:
    """Run ``target(*args)`` in ``nproc`` new processes, ranks 0..nproc-1 of one group on this
    machine, and wait for all of them. ``target`` is "module:function"; ``args`` must be
    JSON (the ranks are fresh interpreters, started as ``python -c``, so nothing is pickled
    and the caller's ``__main__`` is never re-imported). ``log`` receives each line rank 0
    prints (else it goes to this process's stdout). A rank's MnistlabError (a ConfigError,
    a diverged run...) is raised here as the same error; any other failure as a RuntimeError
    naming the rank (its traceback went to stderr)."""
    tmp = Path(tempfile.mkdtemp(prefix="mnistlab-ranks-"))
    (tmp / "call.json").write_text(json.dumps({"target": target, "args": args}))
    procs: list[subprocess.Popen] = []
    pump = None
    try:
        for r in range(nproc):
            env = {**os.environ, "RANK": str(r), "WORLD_SIZE": str(nproc),
                   "LOCAL_RANK": str(r), "LOCAL_WORLD_SIZE": str(nproc),
                   "PYTHONUNBUFFERED": "1",
                   ENV_INIT: f"file://{tmp / 'rendezvous'}", _ENV_PARENT: str(os.getpid())}
            piped = r == 0 and log is not None
            procs.append(subprocess.Popen([sys.executable, "-c", _BOOT, str(tmp)], env=env,
                                          stdout=subprocess.PIPE if piped else None,
                                          text=piped or None))
            if piped:
                pump = threading.Thread(target=_pump, args=(procs[0].stdout, log), daemon=True)
                pump.start()
        failed = _wait(procs)
        if pump is not None:
            pump.join(timeout=10)
        if failed is not None:
            raise _rank_error(tmp, failed, procs[failed].returncode)
    except KeyboardInterrupt:
        # Ctrl-C reached every rank too (one process group): let rank 0 record "interrupted"
        _stop(procs, grace=30.0)
        raise
    finally:
        _stop(procs, grace=10.0)
        shutil.rmtree(tmp, ignore_errors=True)


def _pump(stream: Any, log: Callable[[str], None]) -> None:
    for line in stream:
        log(line.rstrip("\n"))


_ENV_PARENT = "MNISTLAB_LAUNCHER_PID"
_BOOT = "import sys; from mnistlab.distributed import _rank_entry; _rank_entry(sys.argv[1])"


def _rank_entry(tmp: str) -> None:
    """A rank started by ``launch``: die with the launcher, call the target, relay a user
    error to the launcher."""
    _die_with_parent(int(os.environ[_ENV_PARENT]))
    call = json.loads(Path(tmp, "call.json").read_text())
    module, _, name = call["target"].partition(":")
    target = getattr(importlib.import_module(module), name)
    try:
        target(*call["args"])
    except errors.MnistlabError as e:
        Path(tmp, f"error-{os.environ['RANK']}.json").write_text(
            json.dumps({"type": type(e).__name__, "message": str(e)}))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the launcher died before prctl took effect
        os._exit(1)


def _wait(procs: list[subprocess.Popen]) -> int | None:
    """Wait until every rank has exited; the first rank that failed (the others get 10 s to
    notice, as their collectives break, before they are stopped), or None."""
    while True:
        codes = [p.poll() for p in procs]
        bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if bad:
            deadline = time.monotonic() + 10.0
            for p in procs:
                try:
                    p.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            return bad[0]
        if all(c == 0 for c in codes):
            return None
        time.sleep(0.1)


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _rank_error(tmp: Path, rank: int, code: int | None) -> Exception:
    """The error a failed rank relayed (the first rank that wrote one), rebuilt by type."""
    for path in sorted(tmp.glob("error-*.json")):
        try:
            e = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        cls = getattr(errors, str(e.get("type")), None)
        if isinstance(cls, type) and issubclass(cls, errors.MnistlabError):
            return cls(e.get("message", ""))
    if code is not None and code < 0:
        how = f"was killed by signal {signal.Signals(-code).name}"
    else:
        how = f"exited with code {code} (its traceback is above)"
    return RuntimeError(f"training rank {rank} {how}")
