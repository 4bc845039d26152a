"""Micro-batching: images from concurrent requests are classified in one forward pass.

A request's preprocessed image is ``submit``-ted and awaited. A lone image waits at most
``window_s`` for others to join it (or until ``max_batch`` are waiting); while a batch is
being classified, newcomers gather and go together as soon as it is done, so under load the
batches grow by themselves and an idle server adds at most the window to a request.
Batches run one at a time on one executor thread (``concurrency`` > 1: that many at once,
e.g. one per preprocessing process); the event loop only moves futures.

The same image gets bitwise the same answer whatever it is batched with: see
``padded_size`` and ``batch_invariant`` below.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

import numpy as np

X = TypeVar("X")
Y = TypeVar("Y")


class MicroBatcher(Generic[X, Y]):
    """Collects submitted items into batches for ``run(items) -> results`` (one result
    per item, in order), called in ``executor``. All methods run on one event loop."""

    def __init__(self, run: Callable[[list[X]], Sequence[Y]], *, executor: Executor,
                 max_batch: int = 32, window_s: float = 0.002, concurrency: int = 1):
        self.run, self.executor = run, executor  # the executor may be replaced between batches
        self.max_batch, self.window_s, self.concurrency = max_batch, window_s, concurrency
        self._pending: list[tuple[X, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._running = 0  # batches in the executor
        self.batches = 0  # statistics: batches run and the items in them
        self.items = 0
        self.largest = 0

    async def submit(self, item: X) -> Y:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((item, fut))
        if self._running < self.concurrency:
            if len(self._pending) >= self.max_batch or self.window_s <= 0:
                self._launch()
            elif self._timer is None:
                self._timer = loop.call_later(self.window_s, self._launch)
        return await fut  # a cancelled request's future is skipped by _launch/_finish

    def _launch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch: list[tuple[X, asyncio.Future]] = []
        while self._pending and len(batch) < self.max_batch:
            item, fut = self._pending.pop(0)
            if not fut.done():
                batch.append((item, fut))
        if not batch:
            return
        self._running += 1
        self.batches += 1
        self.items += len(batch)
        self.largest = max(self.largest, len(batch))
        loop = asyncio.get_running_loop()
        try:
            job = loop.run_in_executor(self.executor, self.run, [item for item, _ in batch])
        except Exception as e:  # refused at once (a pool already broken or shut down): the
            job = loop.create_future()  # batch fails like one that ran, and frees its slot
            job.set_exception(e)
        job.add_done_callback(functools.partial(self._finish, batch))

    def _finish(self, batch: list[tuple[X, asyncio.Future]], job: asyncio.Future) -> None:
        self._running -= 1
        error = job.exception() if not job.cancelled() else asyncio.CancelledError()
        results: Sequence[Any] = () if error else job.result()
        if not error and len(results) != len(batch):
            error = RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
        for i, (_, fut) in enumerate(batch):
            if fut.done():
                continue
            if error:
                fut.set_exception(error)
            else:
                fut.set_result(results[i])
        if self._pending and self._running < self.concurrency:
            self._launch()  # they have waited through a running batch already: go now

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0


# ------------------------------------------------------------------------------ shapes
# BLAS and oneDNN pick their kernels by the batch dimension: on an x86 CPU here a batch of 1
# (matrix-vector) and of 2-3 sum in another order than a batch of 4 or more, so a digit's
# probabilities would differ in the last bits with the company it is batched in. Rows of a
# batch of one fixed size are computed alike (rows do not interact in an eval-mode model),
# so batches are padded with blank images: to a multiple of the first of PAD_MULTIPLES for
# which the model is checked to give the same rows at all those sizes, else always to
# max_batch rows.

PAD_MULTIPLES = (4, 8)


def padded_size(n: int, max_batch: int, multiple: int) -> int:
    """Rows of the forward pass for ``n`` images: ``n`` rounded up to ``multiple``."""
    return min(max(max_batch, n), -(-n // multiple) * multiple)


def batch_invariant(probabilities: Callable[[np.ndarray], np.ndarray], max_batch: int,
                    multiple: int, seed: int = 0) -> bool:
    """Whether ``probabilities((N, 28, 28) images01) -> (N, C)`` gives every row bitwise
    the same at each padded size ``multiple, 2*multiple, ... <= max_batch`` as in one batch
    of ``max_batch`` rows. Kernel choice depends on shapes, not values: random images do."""
    x = np.random.default_rng(seed).random((max_batch, 28, 28), dtype=np.float32)
    full = probabilities(x)
    sizes = sorted({padded_size(n, max_batch, multiple) for n in range(1, max_batch + 1)})
    return all(np.array_equal(probabilities(x[:s]), full[:s]) for s in sizes)
