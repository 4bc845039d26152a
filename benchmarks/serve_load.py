"""Load on the prediction server, next to the same work done in-process (the floor).

    python benchmarks/serve_load.py [RUN_OR_CHECKPOINT] [--requests 2000] [--concurrency 32]
                                    [--server-args "--max-batch 1"]

Starts ``mnistlab serve`` on 127.0.0.1 (a free port) as a subprocess, then sends
``--requests`` POST /api/predict requests (multipart ``file``: PNGs of MNIST test digits
drawn dark on white on the page's 280x280 canvas and sent, as the page sends them, at
``--send-size`` = 112 px a side; 280 sends the canvas as it is) over ``--concurrency``
keep-alive connections, each sending its next request when the last is answered, bounded
by ``--time-limit`` seconds.

The client costs the shared cores little: one asyncio thread writing prepared request bytes
and reading responses with plain streams (no HTTP library; uvloop if installed), a fraction
of a millisecond of CPU per request (printed as ``client_cpu_ms_per_request``). The server's own CPU
time per request (user + system, its whole process tree, from /proc) is printed beside
requests/s: requests/s depends on the machine and what else runs on it, CPU per request
much less so. Errors are any non-200 answer, a 200 without a label, or a broken connection.

The in-process floor is ``Predictor.predict_one`` on the same images (preprocessing plus
inference, no HTTP, one torch thread). Without a checkpoint a tiny MLP is trained first (a
few seconds; full MNIST if MNISTLAB_DATA_DIR is set, else mnist-5k). The last line printed
is one JSON object: requests, errors, p50_ms, p99_ms, requests_per_s, inprocess_p50_ms,
inprocess_cpu_ms, server_cpu_ms_per_request (server_main_cpu_ms_per_request: of which the
server process itself, the rest being its preprocessing workers), client_cpu_ms_per_request,
mean_batch (from the server's log), cpus, loadavg_before, loadavg_after.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

BOUNDARY = "mnistlab-load-7d3f"


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


def canvas_pngs(n: int, send_size: int = 112) -> list[bytes]:
    """``n`` MNIST test digits (spread over the test split) as the page sends them: drawn
    dark on white on its 280x280 canvas, then reduced to ``send_size`` px a side."""
    from mnistlab import data

    name = "mnist" if os.environ.get("MNISTLAB_DATA_DIR") else "mnist-5k"
    ds = data.load(name, "test")
    out = []
    for i in np.linspace(0, len(ds.labels) - 1, n).round().astype(int):  # mnist-5k is sorted
        digit = ds.images[i]
        img = Image.fromarray(255 - digit).resize((280, 280), Image.Resampling.BILINEAR)
        if send_size != 280:
            img = img.resize((send_size, send_size), Image.Resampling.BOX)
        buf = io.BytesIO()
        img.convert("RGBA").save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def request_bytes(png: bytes, port: int) -> bytes:
    """One complete HTTP/1.1 request: POST /api/predict, the PNG as multipart field file."""
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"digit.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + png + \
        f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


# ------------------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str, port: int, extra: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mnistlab", "serve", checkpoint, "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "info", "--no-access-log", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"server not healthy after {timeout:.0f} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process ``pid`` alone (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime+stime


def own_cpu_seconds(pid: int) -> float | None:
    try:
        return cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return None


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` and its live descendants (Linux /proc; None
    elsewhere)."""
    def children(p: int) -> list[int]:
        try:
            return [int(c) for t in os.listdir(f"/proc/{p}/task")
                    for c in open(f"/proc/{p}/task/{t}/children").read().split()]
        except OSError:
            return []

    try:
        total, todo = cpu_seconds(pid), children(pid)
    except (OSError, ValueError, IndexError):
        return None
    while todo:
        p = todo.pop()
        try:
            total += cpu_seconds(p)
        except (OSError, ValueError, IndexError):  # it exited meanwhile
            continue
        todo += children(p)
    return total


# ------------------------------------------------------------------------------ client


async def one_connection(port: int, requests: list[bytes], next_index, latencies: list[float],
                         errors: list[str], deadline: float) -> None:
    """Send requests one after another over one keep-alive connection (reopened if the
    server closes it), until ``next_index()`` is None or the deadline passes."""
    reader = writer = None
    while (i := next_index()) is not None and time.perf_counter() < deadline:
        t0 = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(requests[i % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
            body = await reader.readexactly(int(m.group(1))) if m else b""
            ok = status == 200 and b'"label"' in body
            if re.search(rb"\r\nconnection:\s*close", head, re.IGNORECASE):
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as e:
            ok, status, body = False, 0, repr(e).encode()
            if writer is not None:
                writer.close()
            writer = None
        if ok:
            latencies.append(time.perf_counter() - t0)
        else:
            errors.append(f"{status}: {body[:200].decode('utf-8', 'replace')}")
    if writer is not None:
        writer.close()


def run_load(port: int, requests: list[bytes], n: int, concurrency: int,
             time_limit: float) -> tuple[list[float], list[str], int, float]:
    """Returns (latencies in s of the successful requests, error descriptions, requests
    sent, wall seconds)."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(n))

    async def main() -> float:
        deadline = time.perf_counter() + time_limit
        t0 = time.perf_counter()
        await asyncio.gather(*(one_connection(port, requests, lambda: next(counter, None),
                                              latencies, errors, deadline)
                               for _ in range(concurrency)))
        return time.perf_counter() - t0

    try:
        import uvloop  # optional: a cheaper event loop for the client too

        wall = uvloop.run(main())
    except ImportError:
        wall = asyncio.run(main())
    return latencies, errors, len(latencies) + len(errors), wall


def percentile_ms(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q)) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", help="run directory or checkpoint (default: train "
                    "a tiny model first)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--time-limit", type=float, default=300, help="seconds for the load phase")
    ap.add_argument("--send-size", type=int, default=112,
                    help="side of the PNGs sent, px (the page's: 112; its canvas: 280)")
    ap.add_argument("--images", type=int, default=100, help="distinct digits to cycle through")
    ap.add_argument("--server-args", default="", help="extra flags for `mnistlab serve`, "
                    "e.g. \"--max-batch 1\" (no micro-batching), \"--worker-kind thread\" or "
                    "\"--runtime onnx\"")
    args = ap.parse_args()
    if not 1 <= args.send_size <= 280:
        ap.error(f"--send-size: 1 to 280 px (the page's canvas), got {args.send_size}")

    tmp = tempfile.TemporaryDirectory(prefix="serve_load-")
    checkpoint = args.checkpoint
    if checkpoint is None:
        t0 = time.perf_counter()
        checkpoint = str(train_tiny(Path(tmp.name)))
        print(f"trained a tiny MLP in {time.perf_counter() - t0:.1f} s -> {checkpoint}")
    payloads = canvas_pngs(args.images, args.send_size)

    # -- in-process floor: the same images through Predictor, one at a time, with one torch
    # thread as the server's inference thread uses
    import torch

    from mnistlab.predict import Predictor

    torch.set_num_threads(1)
    predictor = Predictor.load(checkpoint)
    for p in payloads[:10]:
        predictor.predict_one(p)  # warm-up
    inproc = []
    cpu0 = time.thread_time()
    for i in range(min(args.requests, 300)):
        t0 = time.perf_counter()
        predictor.predict_one(payloads[i % len(payloads)])
        inproc.append(time.perf_counter() - t0)
    inproc_cpu_ms = (time.thread_time() - cpu0) * 1000 / len(inproc)
    del predictor

    # -- over HTTP
    port = free_port()
    log = Path(tmp.name) / "server.log"
    proc = start_server(checkpoint, port, shlex.split(args.server_args), log)
    loadavg_before = os.getloadavg()[0]
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log)
        requests = [request_bytes(p, port) for p in payloads]
        run_load(port, requests, min(200, args.requests), args.concurrency, 60)  # warm-up
        cpu0, main0, client0 = (tree_cpu_seconds(proc.pid), own_cpu_seconds(proc.pid),
                                time.process_time())
        latencies, errors, sent, wall = run_load(port, requests, args.requests,
                                                 args.concurrency, args.time_limit)
        cpu1, main1, client1 = (tree_cpu_seconds(proc.pid), own_cpu_seconds(proc.pid),
                                time.process_time())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    loadavg_after = os.getloadavg()[0]
    server_log = log.read_text(errors="replace")
    tmp.cleanup()
    batches = re.findall(r"classified (\d+) images in (\d+) batches", server_log)

    per_request = lambda a, b: round((b - a) * 1000 / sent, 3) if sent and a is not None \
        and b is not None else None  # noqa: E731
    result = {
        "requests": sent,
        "errors": len(errors),
        "p50_ms": round(percentile_ms(latencies, 50), 2),
        "p99_ms": round(percentile_ms(latencies, 99), 2),
        "requests_per_s": round(len(latencies) / wall, 1) if wall else 0.0,
        "inprocess_p50_ms": round(statistics.median(inproc) * 1000, 2),
        "inprocess_cpu_ms": round(inproc_cpu_ms, 3),  # CPU time of one predict_one
        "server_cpu_ms_per_request": per_request(cpu0, cpu1),
        # of which the server process itself (HTTP, batching, the model); the rest is its
        # preprocessing worker processes
        "server_main_cpu_ms_per_request": per_request(main0, main1),
        "client_cpu_ms_per_request": per_request(client0, client1),
        # over the warm-up and the measured load together
        "mean_batch": round(int(batches[-1][0]) / int(batches[-1][1]), 2) if batches else None,
        "cpus": os.cpu_count(),
        "send_size": args.send_size,
        "loadavg_before": round(loadavg_before, 2),
        "loadavg_after": round(loadavg_after, 2),
    }
    print(f"server: {sent} requests over {args.concurrency} connections in {wall:.1f} s, "
          f"{len(errors)} errors; p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
          f"{result['requests_per_s']} requests/s; server CPU "
          f"{result['server_cpu_ms_per_request']} ms/request (its main process "
          f"{result['server_main_cpu_ms_per_request']}), client CPU "
          f"{result['client_cpu_ms_per_request']} ms/request, mean batch "
          f"{result['mean_batch']}  ({result['cpus']} CPUs shared by client and server; load "
          f"average {loadavg_before:.1f} before, {loadavg_after:.1f} after)")
    for e in sorted(set(errors))[:5]:
        print(f"  error: {e}")
    print(f"in-process Predictor.predict_one (preprocess + model, no HTTP): p50 "
          f"{result['inprocess_p50_ms']} ms, p99 {percentile_ms(inproc, 99):.2f} ms, CPU "
          f"{result['inprocess_cpu_ms']} ms each")
    if sent < args.requests:
        print(f"stopped at the {args.time_limit:.0f} s limit after {sent} requests")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
