"""Two-process training of the NumPy engine: the first layer's rows split between this
process and a forked worker (`fit(..., workers=2)`).

Why: with one process, the step's element-wise work (Adam, the loss, the small layers) runs
on one core while the other core's BLAS thread spins idle, and both cores' matmuls share
the first layer's arrays, so each update first has to pull cache lines back from the other
core. Giving each process its own rows of the first layer, with one BLAS thread each, lets
both cores do matmuls *and* Adam on arrays that only they touch. It is the simplest form of
tensor (model) parallelism, the one large models use across GPUs:

    z = x @ W + b = x[:, :r] @ W[:r] + x[:, r:] @ W[r:] + b

Per step, for a batch of B images (the same batches in both, from the shared seed):

    worker:  gather x[:, r:]  ->  z_w = x[:, r:] @ W[r:]  -> post z_w ... wait dz
             -> dW[r:] = x[:, r:]^T dz -> update W[r:] (its part of the optimizer)
    main:    gather x[:, :r]  ->  z = x[:, :r] @ W[:r]  -> wait z_w; z += z_w + b
             -> the rest of the network, the loss and its backward -> post dz
             -> dW[:r], db, update W[:r] and every other parameter

Only two (B, H) arrays cross between the processes per step, through shared memory. The
hand-offs are counters in shared memory that the waiting side polls (a few microseconds;
waking a process that sleeps on a lock costs ~30 us here, a sizeable part of a ~1 ms step). Polling relies on x86's
ordering of stores (data written before the counter is seen before it), so this mode is for
x86-64 with fork (Linux). The optimizer state of the first layer lives in shared memory, so
at the end of each epoch `opt` and the model hold the whole, current state as usual.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import platform
import signal

import numpy as np

from .layers import Linear, Sequential
from .losses import SoftmaxCrossEntropy
from .optim import Optimizer
from .step import Gather, Penalties, batch_order

__all__ = ["TwoProcessStep", "supported"]

# the main process also runs the rest of the network, so it takes fewer of the rows (a
# multiple of 16 rows: measured ~3% faster than odd splits in OpenBLAS's kernels)
MAIN_SHARE, ROW_MULTIPLE = 0.48, 16

# slots of the shared counters
GO, DONE, EPOCH, EPOCH_NO, STOP, FAILED = range(6)


class _Stopped(Exception):
    """The main process asked the worker to stop."""


def supported() -> str | None:
    """None if this machine can run the two-process mode, else why not."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"needs an x86-64 CPU (its store ordering), not {platform.machine()}"
    if "fork" not in mp.get_all_start_methods():
        return "needs the 'fork' start method (Linux)"
    return None


def shared_like(a: np.ndarray) -> np.ndarray:
    """A copy of `a` in anonymous shared memory, which a forked child shares (not copies)."""
    buf = mmap.mmap(-1, max(a.nbytes, 1))
    out = np.frombuffer(buf, dtype=a.dtype, count=a.size).reshape(a.shape)
    out[...] = a
    return out


class _Flags:
    """Counters in shared memory: one side posts a value, the other waits until a slot
    reaches it, polling (and yielding the core, in case both processes share one)."""

    def __init__(self, peer_alive) -> None:
        self.a = shared_like(np.zeros(6, dtype=np.int64))
        self.peer_alive = peer_alive  # set by each side after the fork

    def post(self, slot: int, value: int) -> None:
        self.a[slot] = value

    def wait(self, slot: int, value: int) -> None:
        a, spins = self.a, 0
        while a[slot] < value:
            os.sched_yield()
            spins += 1
            if spins % 4096 == 0:
                if a[STOP]:
                    raise _Stopped
                if a[FAILED] or not self.peer_alive():
                    raise RuntimeError("the other training process stopped (see its error above)")


class TwoProcessStep:
    """`fit`'s step for workers=2 (see the module docstring). The first layer of `model`
    must be a Linear that skips its input gradient, as in `build_mlp`."""

    def __init__(self, model: Sequential, opt: Optimizer, x_train, batch_size, norm, l1, l2,
                 smoothing, *, seed: int) -> None:  # fmt: skip
        why = supported()
        if why:
            raise ValueError(f"workers=2 {why}; use workers=1")
        first = model.layers[0]
        if not isinstance(first, Linear) or first.input_grad:
            raise ValueError("workers=2 needs a model whose first layer is a Linear with "
                             "input_grad=False (as build_mlp makes)")  # fmt: skip
        w, b = first.weight, first.bias
        iw = next((i for i, p in enumerate(opt.params) if p is w), None)
        if iw is None:
            raise ValueError("workers=2: the optimizer does not hold the first layer's weight")
        d = w.value.shape[0]
        r = ROW_MULTIPLE * round(d * MAIN_SHARE / ROW_MULTIPLE)
        r = max(1, min(d - 1, r))  # main: rows [:r], worker: rows [r:]

        # the first layer's weight and its optimizer state move to shared memory, where
        # both processes update their own rows in place
        w.value = shared_like(w.value)
        for slot in opt.slots:
            opt.state[slot][iw] = shared_like(opt.state[slot][iw])
        rest = [(i, slice(None)) for i in range(len(opt.params)) if i != iw]
        self.opt, self.main_opt = opt, opt.view([(iw, slice(0, r)), *rest])
        worker_opt = opt.view([(iw, slice(r, None))])

        self.model, self.layers, self.b = model, model.layers[1:], b
        self.w, self.r, self.l1, self.l2 = w, r, l1, l2
        self.loss_fn = SoftmaxCrossEntropy(smoothing)
        self.penalties = Penalties(self.main_opt.params, l1, l2)
        B, H = min(batch_size, len(x_train)), w.value.shape[1]
        self.z = np.empty((B, H), dtype=model.dtype)
        self.z_worker = shared_like(np.zeros((B, H), dtype=model.dtype))  # worker -> main
        self.dz = shared_like(np.zeros((B, H), dtype=model.dtype))  # main -> worker
        # the learning rate of step t sits in lr[t % 2]: the main process writes step t+1's
        # while the worker may still be reading step t's
        self.lr = shared_like(np.zeros(2))
        self.gather = Gather(np.ascontiguousarray(x_train[:, :r]), batch_size, model.dtype, norm)
        self.t = 0  # steps taken in this fit (the hand-off counters count from here)
        self.epochs_begun = 0

        from threadpoolctl import threadpool_limits

        # one BLAS thread per process (restored in close); set before the fork, which the
        # worker inherits
        self._blas = threadpool_limits(1)
        ctx = mp.get_context("fork")
        self.proc = ctx.Process(
            target=_worker_main,
            args=(self, worker_opt, x_train, batch_size, norm, seed, os.getpid()),
            daemon=True,
            name="mnistlab-numpy-worker",
        )
        self.flags = _Flags(peer_alive=lambda: self.proc.exitcode is None)
        try:
            self.proc.start()
        except BaseException:
            self._blas.restore_original_limits()
            raise

    def begin_epoch(self, epoch: int) -> None:
        self.flags.post(EPOCH_NO, epoch)
        self.epochs_begun += 1
        self.flags.post(EPOCH, self.epochs_begun)  # posted last: the worker may start

    def __call__(self, idx: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, np.ndarray]:
        self.t += 1
        self.lr[self.t % 2] = lr  # posted to the worker with GO below
        self.main_opt.lr = lr
        n, flags = len(idx), self.flags
        x = self.gather(idx)  # (B, r): this process's pixel columns
        z = np.matmul(x, self.w.value[: self.r], out=self.z[:n])  # (B, H), partial
        flags.wait(DONE, 2 * self.t - 1)  # the worker's part of z is ready
        z += self.z_worker[:n]
        z += self.b.value
        for layer in self.layers:  # the rest of the network, as Sequential does
            z = layer.forward(z)
        self.loss_fn(z, y)
        d = self.loss_fn.backward()
        for layer in reversed(self.layers):
            d = layer.backward(d)
        self.dz[:n] = d  # dL/dz (B, H), for the worker's rows
        flags.post(GO, 2 * self.t)
        np.matmul(x.T, d, out=self.w.grad[: self.r])  # dW[:r] = x[:, :r]^T dz
        np.sum(d, axis=0, out=self.b.grad)
        self.penalties()
        self.main_opt.step()
        return self.loss_fn.nll, self.loss_fn.pred

    def end_epoch(self) -> None:
        self.flags.wait(DONE, 2 * self.t)  # the worker's last update of the epoch is in
        self.opt.t, self.opt.lr = self.main_opt.t, self.main_opt.lr

    def close(self) -> None:
        if self.proc.exitcode is None:
            self.flags.post(STOP, 1)
            self.flags.post(EPOCH, 1 << 62)
            self.proc.join(timeout=10)
        if self.proc.exitcode is None:
            self.proc.kill()
            self.proc.join()
        self._blas.restore_original_limits()
        self.opt.t, self.opt.lr = self.main_opt.t, self.main_opt.lr


def _worker_main(step: TwoProcessStep, opt: Optimizer, x_train, batch_size, norm, seed,
                 parent: int) -> None:  # fmt: skip
    """The forked worker: its rows of the first layer, step after step, until STOP."""
    flags = step.flags
    flags.peer_alive = lambda: os.getppid() == parent
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the main process stops us
    try:
        r, n = step.r, len(x_train)
        gather = Gather(np.ascontiguousarray(x_train[:, r:]), batch_size, step.model.dtype, norm)
        w = opt.params[0]  # rows [r:] of the first layer's weight (a view, shared)
        penalties = Penalties([w], step.l1, step.l2)
        t = epochs = 0
        while True:
            epochs += 1
            flags.wait(EPOCH, epochs)  # the main process began an epoch, or says stop
            if flags.a[STOP]:
                return
            for idx in batch_order(n, batch_size, seed, int(flags.a[EPOCH_NO])):
                t += 1
                x = gather(idx)  # (B, d - r)
                np.matmul(x, w.value, out=step.z_worker[: len(idx)])
                flags.post(DONE, 2 * t - 1)
                flags.wait(GO, 2 * t)  # dz is ready
                np.matmul(x.T, step.dz[: len(idx)], out=w.grad)  # dW[r:] = x[:, r:]^T dz
                penalties()
                opt.lr = float(step.lr[t % 2])
                opt.step()
                flags.post(DONE, 2 * t)
    except _Stopped:
        return
    except BaseException:
        flags.post(FAILED, 1)
        raise
