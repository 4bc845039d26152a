"""Micro-batching: how the batcher groups requests, and the promise that a digit gets
bitwise the same answer whether it is classified alone or together with others."""

from __future__ import annotations

import asyncio
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from mnistlab import data  # noqa: E402
from mnistlab.serve.app import create_app  # noqa: E402
from mnistlab.serve.batching import MicroBatcher, batch_invariant, padded_size  # noqa: E402


def mnist_test_digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, 28, 28) uint8 MNIST test digits of the offline mnist-5k set, spread over its
    (sorted) classes, and their labels."""
    ds = data.load("mnist-5k", "test")
    idx = np.linspace(0, len(ds.labels) - 1, n).round().astype(int)
    return ds.images[idx], ds.labels[idx]


def canvas_png(digit: np.ndarray) -> bytes:
    """A digit as the drawing page sends it: 280x280, dark ink on white, RGBA PNG."""
    img = Image.fromarray(255 - digit).resize((280, 280), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.convert("RGBA").save(buf, "PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------ the batcher


def batched(run, items, threads: int = 1, **kw):
    """Submit ``items`` at once to a MicroBatcher over ``run``; (results, batcher)."""

    async def go():
        with ThreadPoolExecutor(threads) as ex:
            b = MicroBatcher(run, executor=ex, **kw)
            results = await asyncio.gather(*(b.submit(i) for i in items),
                                           return_exceptions=True)
            return results, b

    return asyncio.run(go())


def test_batcher_groups_what_arrives_together_and_keeps_each_answer_with_its_request() -> None:
    calls: list[list[int]] = []

    def run(items):
        calls.append(list(items))
        return [x * 10 for x in items]

    results, b = batched(run, range(10), max_batch=4, window_s=0.05)
    assert results == [x * 10 for x in range(10)]
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert (b.batches, b.items, b.largest) == (3, 10, 4)

    calls.clear()
    results, b = batched(run, [7], max_batch=4, window_s=0.01)  # alone: after the window
    assert results == [70] and calls == [[7]]


def test_batcher_runs_concurrency_batches_at_once_and_gathers_what_waits_behind_them() -> None:
    """The preprocessing workers' batcher: no window, one batch per worker; what arrives
    while every worker is busy goes together to the first one free."""
    calls: list[list[int]] = []
    both = threading.Barrier(2, timeout=10)  # broken unless the first two batches overlap

    def run(items):
        calls.append(list(items))
        if len(calls) <= 2:
            both.wait()
        return [x * 10 for x in items]

    results, b = batched(run, range(6), threads=2, max_batch=8, window_s=0, concurrency=2)
    assert results == [x * 10 for x in range(6)]
    assert sorted(calls[:2]) == [[0], [1]] and calls[2:] == [[2, 3, 4, 5]]
    assert (b.batches, b.largest) == (3, 4)


def test_batcher_survives_an_executor_that_refuses_work() -> None:
    """A process pool whose worker died refuses new work at once; the batch must fail
    like one that ran and free its slot, or every later request waits forever (a hang
    seen once in the fast lane, in test_a_dead_preprocessing_worker_is_replaced)."""

    async def go():
        refusing = ThreadPoolExecutor(1)
        refusing.shutdown()
        b = MicroBatcher(lambda items: [x * 10 for x in items], executor=refusing,
                         max_batch=4, window_s=0)
        with pytest.raises(RuntimeError):
            await b.submit(1)
        with ThreadPoolExecutor(1) as ok:
            b.executor = ok  # as the server does when it replaces a broken pool
            return await asyncio.wait_for(b.submit(2), 10)

    assert asyncio.run(go()) == 20


def test_batcher_reports_a_failed_batch_to_each_of_its_requests() -> None:
    def run(items):
        if 3 in items:
            raise RuntimeError("model broke")
        return items

    results, b = batched(run, range(6), max_batch=3, window_s=0.05)
    assert [type(r).__name__ for r in results[:3]] == ["int", "int", "int"]
    assert all(isinstance(r, RuntimeError) for r in results[3:])  # the batch [3, 4, 5]
    assert b.batches == 2


def test_batcher_skips_a_request_cancelled_while_waiting() -> None:
    seen: list[list[int]] = []

    async def go():
        with ThreadPoolExecutor(1) as ex:
            b = MicroBatcher(lambda items: seen.append(items) or items, executor=ex,
                             max_batch=8, window_s=0.05)
            tasks = [asyncio.ensure_future(b.submit(i)) for i in range(3)]
            await asyncio.sleep(0)  # all three are waiting in the window
            tasks[1].cancel()
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(go())
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], asyncio.CancelledError)
    assert seen == [[0, 2]]


def test_padded_sizes_and_the_invariance_check() -> None:
    assert [padded_size(n, 32, 8) for n in (1, 7, 8, 9, 25, 32)] == [8, 8, 8, 16, 32, 32]
    assert [padded_size(n, 20, 8) for n in (1, 17, 20)] == [8, 20, 20]
    assert [padded_size(n, 32, 32) for n in (1, 31)] == [32, 32]  # the fallback: one size

    def row_sums(x):  # rows computed independently: invariant
        return x.reshape(len(x), -1).sum(1, keepdims=True)

    def depends_on_size(x):  # what BLAS does for small batches, exaggerated
        return row_sums(x) * (1 + (len(x) < 16) * 1e-3)

    assert batch_invariant(row_sums, 32, 4)
    assert not batch_invariant(depends_on_size, 32, 4)
    assert not batch_invariant(depends_on_size, 32, 8)
    assert batch_invariant(depends_on_size, 32, 16)  # sizes 16 and 32 only


# ------------------------------------------------------------------------------ the server


def test_a_digit_gets_the_same_probabilities_alone_and_in_any_batch(trained_checkpoint: Path
                                                                    ) -> None:
    app = create_app(trained_checkpoint, max_batch=16)
    workers = app.state.workers
    workers.start()
    try:
        digits, labels = mnist_test_digits(16)
        images = list(digits.astype(np.float32) / 255)
        alone = [workers.classify([x])[0] for x in images]
        for batch in (images, images[3:12], images[:2], images[5:]):
            together = workers.classify(batch)
            first = next(i for i, x in enumerate(images) if x is batch[0])
            for p, q in zip(together, alone[first:]):
                assert np.array_equal(p.probabilities, q.probabilities)  # bitwise
                assert (p.label, p.confidence, p.top_k) == (q.label, q.confidence, q.top_k)
        assert sum(p.label == str(y) for p, y in zip(alone, labels)) >= 14  # real predictions
        assert len({p.label for p in alone}) >= 8
    finally:
        workers.close()


def test_concurrent_requests_share_a_forward_pass_and_get_the_one_at_a_time_answers(
        trained_checkpoint: Path) -> None:
    pngs = [canvas_png(d) for d in mnist_test_digits(8)[0]]
    top_ks = [1 + i % 4 for i in range(8)]
    app = create_app(trained_checkpoint, max_batch=8, batch_window_ms=300, workers=2)

    def post(c: TestClient, i: int) -> dict:
        r = c.post(f"/api/predict?top_k={top_ks[i]}",
                   files={"file": ("d.png", pngs[i], "image/png")})
        assert r.status_code == 200, r.text
        return r.json()

    with TestClient(app, base_url="http://localhost") as c:
        batcher = app.state.workers.batcher
        alone = [post(c, i) for i in range(8)]  # one at a time: each its own forward pass
        assert (batcher.batches, batcher.largest) == (8, 1)

        together: dict[int, dict] = {}
        start = threading.Barrier(8)

        def client(i: int) -> None:
            start.wait()
            together[i] = post(c, i)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert batcher.largest >= 2, "concurrent requests were not batched"
        assert batcher.items == 16
    for i in range(8):
        assert together[i] == alone[i]  # the whole response, probabilities to the last digit
        assert len(together[i]["top_k"]) == top_ks[i]
