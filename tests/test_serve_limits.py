"""The server's exposure and limits (issue 16, item 9): the Host check against DNS rebinding,
no paths or environment details in responses, the docs switch, a deadline on request bodies
(a real slow client over a socket), the bounds on requests in progress and on connections,
a multipart body without its closing boundary, and refused server options."""

from __future__ import annotations

import json
import platform
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from mnistlab.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from mnistlab.cli import main  # noqa: E402
from mnistlab.errors import ConfigError  # noqa: E402
from mnistlab.serve.app import create_app, public_meta, server_config  # noqa: E402
from mnistlab.serve.options import ServeOptions, host_allowed, hosts_for  # noqa: E402

LOCAL = "http://localhost"


def digit_png() -> bytes:
    """A hand-drawn-looking 7: dark ink on white, off-centre (as in test_serve.py)."""
    import io

    from PIL import Image, ImageDraw

    img = Image.new("L", (140, 120), 255)
    ImageDraw.Draw(img).line([(60, 20), (110, 20), (75, 105)], fill=0, width=9, joint="curve")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


DIGIT = digit_png()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app) -> Iterator[int]:
    """The app under uvicorn (with `mnistlab serve`'s settings) in a thread; yields the port."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(server_config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def http(port: int, request: bytes, timeout: float = 20) -> bytes:
    """Send one raw request (with Connection: close) on a new connection; the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        return reply


def error_code(reply: bytes) -> str:
    return json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]


# ------------------------------------------------------------------------------ Host


def test_only_allowed_hosts_are_answered(trained_checkpoint: Path) -> None:
    app = create_app(trained_checkpoint, allowed_hosts=("localhost", "127.0.0.1", "::1",
                                                       "*.digits.example"))
    with TestClient(app, base_url=LOCAL) as c:
        for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000",
                     "LOCALHOST", "a.digits.example", "b.a.digits.example:80"):
            assert c.get("/api/health", headers={"host": host}).status_code == 200, host
        for host in ("rebind.attacker.example", "localhost.attacker.example",
                     "digits.example.attacker.example", "10.0.0.7", "digits.example", ""):
            r = c.get("/api/health", headers={"host": host})
            assert r.status_code == 400 and r.json()["error"] == "bad_host", (host, r.text)
        r = c.post("/api/predict", content=DIGIT, headers={"host": "evil.example",
                                                           "content-type": "image/png"})
        assert r.status_code == 400 and "--allowed-host" in r.json()["message"]


def test_hosts_for_the_bound_address() -> None:
    assert hosts_for("127.0.0.1") == (("localhost", "127.0.0.1", "::1"), False)
    names, ip_ok = hosts_for("192.168.1.20", ("Digits.LAN.",))
    assert names == ("localhost", "127.0.0.1", "::1", "192.168.1.20", "digits.lan")
    assert not ip_ok and host_allowed("digits.lan:8000", names, ip_ok)
    assert not host_allowed("10.0.0.1", names, ip_ok)
    # bound to every interface: any IP literal is fine (rebinding needs a name), names not
    names, ip_ok = hosts_for("0.0.0.0")
    assert ip_ok and host_allowed("10.0.0.1:8000", names, ip_ok)
    assert host_allowed("[fe80::1]:8000", names, ip_ok)
    assert not host_allowed("rebind.attacker.example", names, ip_ok)


# ------------------------------------------------------------------------------ exposure


def test_model_info_shows_no_paths_and_no_environment(trained_checkpoint: Path,
                                                      tmp_path: Path) -> None:
    """A fine-tuned model from a folder dataset, as `/api/model` would have shown it."""
    ck = load_checkpoint(trained_checkpoint)
    secret = "/home/alice/private"
    meta = {**ck.meta, "dataset": f"{secret}/my-digits:0-4",
            "split": {**ck.meta.get("split", {}), "data_dir": f"{secret}/data"},
            "parent": {"path": f"{secret}/runs/base/checkpoints/best", "model": "mlp",
                       "dataset": f"{secret}/my-digits", "code_version": "abc1234+dirty"},
            "finetune": {"source": f"{secret}/runs/base", "mode": "head"},
            "code_version": "abc1234+dirty"}
    save_checkpoint(tmp_path / "checkpoints" / "best", ck.model, meta)
    import torch

    environment = [platform.python_version(), torch.__version__, np.__version__, "abc1234"]
    with TestClient(create_app(tmp_path), base_url=LOCAL) as c:
        r = c.get("/api/model")
        openapi = c.get("/openapi.json").text
    assert r.status_code == 200
    text = r.text
    assert secret not in text and "/home" not in text and "alice" not in text
    for detail in environment:
        assert detail not in text and detail not in openapi, detail
    m = r.json()
    assert m["dataset"] == "my-digits:0-4" and m["parent"]["dataset"] == "my-digits"
    assert "versions" not in m and "code_version" not in m and "path" not in m["parent"]
    assert m["finetune"] == {"mode": "head"} and m["model"] == "mlp"
    assert m["classes"] == ck.meta["classes"] and m["normalization"] == ck.meta["normalization"]

    with TestClient(create_app(tmp_path, expose_versions=True), base_url=LOCAL) as c:
        m = c.get("/api/model").json()
    assert m["versions"]["python"] == platform.python_version()
    assert m["code_version"] == "abc1234+dirty"
    assert secret not in json.dumps(m)  # paths stay hidden even then


def test_public_meta_cuts_windows_paths_too() -> None:
    meta = {"dataset": "C:\\Users\\bob\\digits", "nested": [{"x": "D:/data/set:1-2"}]}
    assert public_meta(meta) == {"dataset": "digits", "nested": [{"x": "set:1-2"}]}


def test_docs_can_be_switched_off(trained_checkpoint: Path) -> None:
    with TestClient(create_app(trained_checkpoint, docs=False), base_url=LOCAL) as c:
        for path in ("/docs", "/redoc", "/openapi.json"):
            r = c.get(path)
            assert r.status_code == 404 and r.json()["error"] == "not_found", path
        assert c.get("/api/health").status_code == 200
    with TestClient(create_app(trained_checkpoint), base_url=LOCAL) as c:
        assert c.get("/docs").status_code == 200
        assert "/api/predict" in c.get("/openapi.json").json()["paths"]


# ------------------------------------------------------------------------------ limits


def test_a_slowly_sent_body_is_cut_off_with_408(trained_checkpoint: Path) -> None:
    """A real client over a socket: headers at once, then one byte every 0.2 s."""
    app = create_app(trained_checkpoint, body_timeout=1.0)
    with running(app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: image/png\r\nContent-Length: 5000\r\n\r\n")
            reply, closed = b"", False
            give_up = time.monotonic() + 20  # the old server held such a client 33 s+
            s.settimeout(0.2)
            while not closed and time.monotonic() < give_up:
                if not reply:  # stop trickling once the server has answered
                    try:
                        s.sendall(b"x")
                    except OSError:  # the server closed the connection
                        closed = True
                try:
                    chunk = s.recv(4096)
                    reply += chunk
                    closed = closed or not chunk
                except TimeoutError:
                    pass
                except ConnectionResetError:  # closed with our trickled bytes unread
                    closed = True
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert error_code(reply) == "body_timeout"
        assert closed, "the connection of a timed-out upload is closed"
        assert b"\r\nserver:" not in reply.lower()  # no server software advertised
        # and the server still serves
        ok = http(port, b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                  b"image/png\r\nConnection: close\r\nContent-Length: "
                  + str(len(DIGIT)).encode() + b"\r\n\r\n" + DIGIT)
        assert ok.startswith(b"HTTP/1.1 200"), ok[:300]


def test_requests_in_progress_are_bounded(trained_checkpoint: Path) -> None:
    # preprocessing in threads, so that it can be held here
    app = create_app(trained_checkpoint, max_concurrent=2, workers=2, worker_kind="thread")
    workers = app.state.workers
    original = workers.prepare
    gate, entered = threading.Event(), threading.Semaphore(0)

    def held(*args):
        entered.release()
        gate.wait(30)
        return original(*args)

    with TestClient(app, base_url=LOCAL) as c:
        workers.preparer.run = held  # each body alone: two batches, one per thread
        codes: list[int] = []
        post = lambda: codes.append(c.post(  # noqa: E731
            "/api/predict", content=DIGIT, headers={"content-type": "image/png"}).status_code)
        threads = [threading.Thread(target=post) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in threads:
            assert entered.acquire(timeout=30)
        busy = c.get("/api/health")
        assert busy.status_code == 503 and busy.json()["error"] == "busy"
        assert busy.headers["retry-after"] == "1"
        assert c.post("/api/predict", content=DIGIT,
                      headers={"content-type": "image/png"}).status_code == 503
        gate.set()
        for t in threads:
            t.join(timeout=30)
        assert codes == [200, 200]
        assert c.get("/api/health").status_code == 200


def test_open_connections_are_bounded(trained_checkpoint: Path) -> None:
    app = create_app(trained_checkpoint, max_connections=3)
    health = b"GET /api/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    with running(app) as port:
        # connections are accepted in order, so the idle ones count before each request's
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        try:
            assert http(port, health).startswith(b"HTTP/1.1 200")  # the third: served
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            assert http(port, health).startswith(b"HTTP/1.1 503")  # a fourth: refused
        finally:
            for s in idle:
                s.close()
        deadline = time.monotonic() + 10
        while not (reply := http(port, health)).startswith(b"HTTP/1.1 200"):
            assert time.monotonic() < deadline, reply  # the server notices the closes
            time.sleep(0.1)


def test_a_multipart_body_without_its_closing_boundary_is_400(trained_checkpoint: Path) -> None:
    head = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    ctype = {"content-type": "multipart/form-data; boundary=xyz"}
    with TestClient(create_app(trained_checkpoint), base_url=LOCAL) as c:
        whole = c.post("/api/predict", content=head + DIGIT + b"\r\n--xyz--\r\n", headers=ctype)
        assert whole.status_code == 200 and whole.json()["label"] == "7"
        for cut in (head + DIGIT, head + DIGIT + b"\r\n--xyz\r\n", head + DIGIT + b"\r\n--xy",
                    b"--xyz\r\nbroken"):
            r = c.post("/api/predict", content=cut, headers=ctype)
            assert r.status_code == 400 and r.json()["error"] == "bad_multipart", r.text
            assert "closing boundary" in r.json()["message"]


# ------------------------------------------------------------------------------ options


BAD_FLAGS = [
    (["--max-upload-mb", "-1"], "--max-upload-mb: must be > 0"),
    (["--max-upload-mb", "nan"], "--max-upload-mb: must be > 0"),
    (["--max-upload-mb", "0"], "--max-upload-mb: must be > 0"),
    (["--max-upload-mb", "1e9"], "--max-upload-mb: must be > 0 and at most 1024"),
    (["--max-pixels", "0"], "--max-pixels: must be >= 1"),
    (["--body-timeout", "0"], "--body-timeout: must be in (0, 3600]"),
    (["--body-timeout", "inf"], "--body-timeout: must be a finite number"),
    (["--max-concurrent", "-3"], "--max-concurrent: must be in 1..100000"),
    (["--max-connections", "0"], "--max-connections: must be in 1..100000"),
    (["--workers", "0"], "--workers: must be in 1..256"),
    (["--max-batch", "0"], "--max-batch: must be in 1..128"),
    (["--batch-window-ms", "-1"], "--batch-window-ms: must be in 0..1000"),
    (["--allowed-host", "evil.example/x"], "--allowed-host: 'evil.example/x' is not a host"),
    (["--port", "0"], "--port: must be in 1..65535"),
    (["--threshold", "1.5"], "threshold must be in 0..1"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_server_options_are_refused_in_one_line(flags, message, capsys) -> None:
    assert main(["serve", ".", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mnistlab: error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err, err


def test_create_app_checks_its_settings(trained_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="--max-batch"):
        create_app(trained_checkpoint, max_batch=0)
    with pytest.raises(ConfigError, match="unknown setting"):
        create_app(trained_checkpoint, max_uplod_bytes=5)
    with pytest.raises(ConfigError, match="--allowed-host"):
        ServeOptions(allowed_hosts="localhost")  # a string, not a list of names
