"""Small, fully valid fixture datasets and a local HTTP server, for tests that need data.

``make_tiny()`` builds a registry entry whose checksums match its generated IDX files, so
``data.load(name, data_dir=...)`` works end to end without the real MNIST files:

    tiny = make_tiny()
    monkeypatch.setitem(data.REGISTRY, tiny.spec.name, tiny.spec)
    tiny.write(tmp_path)                       # files under tmp_path/tiny/
    ds = data.load("tiny", "train", data_dir=tmp_path)
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mnistlab import data

TINY_CLASSES = ("zero", "one", "two", "three")


@dataclass
class Tiny:
    spec: data.DatasetSpec
    arrays: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images, labels)

    def content(self, fname: str) -> bytes:
        """The raw IDX bytes of file ``fname`` (no .gz)."""
        for split, (img, lbl) in self.arrays.items():
            ispec, lspec = self.spec.files[split]
            if fname == ispec.name:
                return data.idx_bytes(img)
            if fname == lspec.name:
                return data.idx_bytes(lbl)
        raise KeyError(fname)

    def gz(self, fname: str) -> bytes:
        return gzip.compress(self.content(fname), mtime=0)

    @property
    def filenames(self) -> list[str]:
        return [f.name for pair in self.spec.files.values() for f in pair]

    def write(self, root: Path, *, compress: bool = True, subdir: bool = True) -> Path:
        """Write every file into ``root/<name>/`` (or ``root`` itself); returns that dir."""
        target = Path(root) / self.spec.name if subdir else Path(root)
        target.mkdir(parents=True, exist_ok=True)
        for fname in self.filenames:
            if compress:
                (target / f"{fname}.gz").write_bytes(self.gz(fname))
            else:
                (target / fname).write_bytes(self.content(fname))
        return target


def make_tiny(
    name: str = "tiny",
    classes: tuple[str, ...] = TINY_CLASSES,
    n_train: int = 200,
    n_test: int = 40,
    seed: int = 0,
    mirrors: tuple[str, ...] = (),
) -> Tiny:
    """A balanced random dataset of 28x28 uint8 images with a matching DatasetSpec."""
    rng = np.random.default_rng(seed)
    arrays, files = {}, {}
    for split, n, prefix in (("train", n_train, "train"), ("test", n_test, "t10k")):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % len(classes)).astype(np.uint8)
        arrays[split] = (images, labels)
        files[split] = tuple(
            data.FileSpec(f"{prefix}-{kind}", hashlib.sha256(data.idx_bytes(arr)).hexdigest(), n)
            for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels))
        )
    spec = data.DatasetSpec(
        name=name, classes=classes, mean=0.5, std=0.29, files=files, mirrors=mirrors
    )
    return Tiny(spec, arrays)


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``mnistlab data ARGV`` through the real entry point: (exit code, stdout, stderr)."""
    from mnistlab.cli import main

    rc = main(["data", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------ HTTP server

Route = Callable[[http.server.BaseHTTPRequestHandler], None]


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    routes: dict[str, Route]  # path -> behaviour
    log: list[str] = field(default_factory=list)  # requested paths, in order
    release: threading.Event = field(default_factory=threading.Event)  # ends stalls


def send_bytes(body: bytes, status: int = 200, *, cut: int | None = None) -> Route:
    """Answer ``body``; with ``cut``, announce the full length but close after ``cut`` bytes."""

    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body if cut is None else body[:cut])
        h.wfile.flush()
        h.close_connection = True

    return route


def send_stream(
    head: bytes, filler: bytes, total: int, *, announce: bool = False, sent: list | None = None
) -> Route:
    """Send ``head`` then ``filler`` repeated up to ``total`` bytes (a Content-Length only if
    ``announce``); appends to ``sent`` how many bytes were written before the client hung up."""

    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        if announce:
            h.send_header("Content-Length", str(total))
        h.end_headers()
        n = 0
        try:
            h.wfile.write(head)
            n = len(head)
            while n < total:
                h.wfile.write(filler)
                n += len(filler)
        except OSError:  # the client stopped reading and closed the connection
            pass
        finally:
            if sent is not None:
                sent.append(n)
        h.close_connection = True

    return route


def send_then_stall(body: bytes, cut: int) -> Route:
    """Send the first ``cut`` bytes of ``body`` (announcing all of it), then hang."""

    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[:cut])
        h.wfile.flush()
        h.server.state.release.wait(30)

    return route


def send_status(status: int) -> Route:
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_error(status)

    return route


def stall(h: http.server.BaseHTTPRequestHandler) -> None:
    """Accept the connection and say nothing until the test ends."""
    h.server.state.release.wait(10)


def flaky(first: Route, then: Route, times: int = 1) -> Route:
    """Behave like ``first`` for the first ``times`` requests, then like ``then``."""
    count = [0]

    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        count[0] += 1
        (first if count[0] <= times else then)(h)

    return route


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state: Server = self.server.state
        state.log.append(self.path)
        route = state.routes.get(self.path)
        if route is None:
            self.send_error(404)
        else:
            route(self)

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@contextmanager
def http_server(routes: dict[str, Route] | None = None) -> Iterator[Server]:
    """A real HTTP server on 127.0.0.1 (free port) in a thread, for the duration of a with."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.block_on_close = False
    state = Server(f"http://127.0.0.1:{httpd.server_address[1]}", routes if routes else {})
    httpd.state = state
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def dead_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
