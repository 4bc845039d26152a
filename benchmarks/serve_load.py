"""Load on the prediction server, next to the same work done in-process (the floor).

    python benchmarks/serve_load.py [RUN_OR_CHECKPOINT] [--requests 2000] [--concurrency 32]

Starts ``python -m mnistlab.serve`` on 127.0.0.1 (a free port) as a subprocess, then sends
``--requests`` POST /api/predict requests (multipart ``file``: 280x280 PNGs of MNIST test
digits drawn dark on white, as the page's canvas makes them) from ``--concurrency``
concurrent clients (threads, one httpx connection each), bounded by ``--time-limit`` seconds. Reports
latency percentiles, requests/s and errors (any non-200 or transport failure), and the
latency of ``Predictor.predict_one`` on the same images in this process: preprocessing plus
inference with no HTTP. Client and server share the machine's cores, so requests/s is a
floor for the server alone. Without a checkpoint it first trains a tiny MLP (a few seconds;
full MNIST if MNISTLAB_DATA_DIR is set, else mnist-5k). The last line printed is one JSON
object: requests, errors, p50_ms, p99_ms, requests_per_s, inprocess_p50_ms.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


def train_tiny(run_dir: Path) -> Path:
    """A 784-128-10 MLP, 300 Adam steps: enough to give real predictions, in seconds."""
    import torch
    import torch.nn.functional as F

    from mnistlab import data
    from mnistlab.checkpoint import base_meta, save_checkpoint
    from mnistlab.models import create_model

    name = "mnist" if os.environ.get("MNISTLAB_DATA_DIR") else "mnist-5k"
    ds = data.load(name, "train")
    torch.manual_seed(0)
    torch.set_num_threads(1)  # small matmuls: one thread beats contended ones
    x = ((torch.from_numpy(ds.images).float() / 255 - ds.mean) / ds.std).unsqueeze(1)
    y = torch.from_numpy(ds.labels)
    model = create_model("mlp", num_classes=len(ds.classes), hidden=[128])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(300):
        idx = torch.randint(0, len(x), (256,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    meta = base_meta(engine="torch", model="mlp", model_args=model.config,
                     classes=list(ds.classes), normalization={"mean": ds.mean, "std": ds.std},
                     dataset=name, seed=0)
    save_checkpoint(run_dir / "checkpoints" / "best", model, meta)
    return run_dir


def canvas_pngs(n: int) -> list[bytes]:
    """``n`` MNIST test digits as the page's canvas sends them: 280x280, dark ink on white."""
    from mnistlab import data

    name = "mnist" if os.environ.get("MNISTLAB_DATA_DIR") else "mnist-5k"
    ds = data.load(name, "test")
    out = []
    for digit in ds.images[:n]:
        img = Image.fromarray(255 - digit).resize((280, 280), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.convert("RGBA").save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mnistlab", "serve", checkpoint, "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server not healthy after {timeout:.0f} s")


def load(url: str, payloads: list[bytes], n: int, concurrency: int,
         time_limit: float) -> tuple[list[float], int, int, float]:
    """``concurrency`` client threads, each with its own connection, send ``n`` requests in
    all (or stop at ``time_limit`` seconds). Returns (latencies in s of successful requests,
    errors, requests sent, wall seconds). Threads rather than asyncio: httpx's async pool
    served its 32 coroutines unevenly here, adding seconds of client-side tail latency."""
    import httpx

    latencies: list[float] = []
    errors = 0
    sent = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + time_limit

    def worker() -> None:
        nonlocal errors, sent
        with httpx.Client(base_url=url, timeout=30) as client:
            while True:
                with lock:
                    if sent >= n or time.perf_counter() > deadline:
                        return
                    i = sent
                    sent += 1
                files = {"file": ("digit.png", payloads[i % len(payloads)], "image/png")}
                t0 = time.perf_counter()
                try:
                    r = client.post("/api/predict", files=files)
                    ok = r.status_code == 200 and "label" in r.json()
                except (httpx.HTTPError, ValueError):
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(dt)
                    else:
                        errors += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.perf_counter() + 35))
    return latencies, errors, sent, time.perf_counter() - t0


def percentile_ms(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", help="run directory or checkpoint (default: train "
                    "a tiny model first)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--time-limit", type=float, default=300, help="seconds for the load phase")
    ap.add_argument("--images", type=int, default=100, help="distinct digits to cycle through")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="serve_load-")
    checkpoint = args.checkpoint
    if checkpoint is None:
        t0 = time.perf_counter()
        checkpoint = str(train_tiny(Path(tmp.name)))
        print(f"trained a tiny MLP in {time.perf_counter() - t0:.1f} s -> {checkpoint}")
    payloads = canvas_pngs(args.images)

    # -- in-process floor: the same images through Predictor, one at a time, with one torch
    # thread as `mnistlab serve` uses
    import torch

    from mnistlab.predict import Predictor

    torch.set_num_threads(1)

    predictor = Predictor.load(checkpoint)
    for p in payloads[:10]:
        predictor.predict_one(p)  # warm-up
    inproc = []
    for i in range(min(args.requests, 300)):
        t0 = time.perf_counter()
        predictor.predict_one(payloads[i % len(payloads)])
        inproc.append(time.perf_counter() - t0)

    # -- over HTTP
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(checkpoint, port)
    try:
        wait_healthy(url, proc)
        load(url, payloads, min(100, args.requests), args.concurrency, 60)  # warm-up
        latencies, errors, sent, wall = load(url, payloads, args.requests, args.concurrency,
                                             args.time_limit)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    tmp.cleanup()

    result = {
        "requests": sent,
        "errors": errors,
        "p50_ms": round(percentile_ms(latencies, 50), 2),
        "p99_ms": round(percentile_ms(latencies, 99), 2),
        "requests_per_s": round(len(latencies) / wall, 1) if wall else 0.0,
        "inprocess_p50_ms": round(statistics.median(inproc) * 1000, 2),
    }
    print(f"server: {sent} requests from {args.concurrency} clients in {wall:.1f} s, "
          f"{errors} errors; p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
          f"{result['requests_per_s']} requests/s  ({os.cpu_count()} CPUs, shared with the "
          f"client)")
    print(f"in-process Predictor.predict_one (preprocess + model, no HTTP): p50 "
          f"{result['inprocess_p50_ms']} ms, p99 {percentile_ms(inproc, 99):.2f} ms")
    if sent < args.requests:
        print(f"stopped at the {args.time_limit:.0f} s limit after {sent} requests")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
