"""The HTTP API, through FastAPI's TestClient: every endpoint, every kind of bad request
(each a 4xx JSON error, and the server keeps serving), and a property-based fuzz of the
upload endpoint that must never produce a 500."""

from __future__ import annotations

import base64
import io
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from helpers_images import png_header_only  # noqa: E402

from mnistlab.preprocess import preprocess_image  # noqa: E402
from mnistlab.serve.app import create_app  # noqa: E402


def png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def digit_image() -> Image.Image:
    """A hand-drawn-looking 7: dark ink on white, off-centre."""
    from PIL import ImageDraw

    img = Image.new("L", (140, 120), 255)
    ImageDraw.Draw(img).line([(60, 20), (110, 20), (75, 105)], fill=0, width=9, joint="curve")
    return img




DIGIT = png(digit_image())


@pytest.fixture(scope="module")
def client(trained_checkpoint: Path):
    app = create_app(trained_checkpoint, max_upload_bytes=200_000, max_pixels=4_000_000)
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as c:
        yield c


def assert_error(r, status: int | tuple[int, ...], code: str | None = None) -> dict:
    assert r.status_code in (status if isinstance(status, tuple) else (status,)), (
        r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "message"} and body["message"], body
    if code:
        assert body["error"] == code, body
    return body


# ------------------------------------------------------------------------------ endpoints


def test_health_model_page_and_schema(client: TestClient) -> None:
    assert client.get("/api/health").json() == {"status": "ok", "model": "mlp"}

    m = client.get("/api/model").json()
    assert m["classes"] == [str(i) for i in range(10)]
    assert m["model"] == "mlp" and "normalization" in m and "train_state" not in m
    assert m["serving"]["max_upload_bytes"] == 200_000
    assert m["serving"]["max_pixels"] == 4_000_000
    assert "image/png" in m["serving"]["accepted_types"]

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<canvas id="pad"' in page.text and "/static/app.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN: everything is local
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200

    schema = client.get("/openapi.json").json()
    post = schema["paths"]["/api/predict"]["post"]
    assert {"multipart/form-data", "application/json", "image/png"} <= set(
        post["requestBody"]["content"])
    assert {"200", "400", "413", "415", "422"} <= set(post["responses"])
    assert "/api/health" in schema["paths"] and "/api/model" in schema["paths"]


def check_prediction(body: dict, source: bytes) -> None:
    assert body["label"] == "7"
    assert body["label"] == body["top_k"][0]["label"]
    assert 0.5 <= body["confidence"] <= 1 and body["unsure"] is False
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-3
    seen = np.asarray(body["input"], dtype=np.float32) / 255
    np.testing.assert_allclose(seen, preprocess_image(source), atol=1 / 255)
    assert body["input_png"].startswith("data:image/png;base64,")
    as_png = Image.open(io.BytesIO(base64.b64decode(body["input_png"].split(",", 1)[1])))
    assert as_png.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(as_png), np.asarray(body["input"], np.uint8))


def test_predict_every_way_of_sending(client: TestClient) -> None:
    b64 = base64.b64encode(DIGIT).decode()
    ways = [
        {"files": {"file": ("seven.png", DIGIT, "image/png")}},
        {"files": {"file": ("seven.png", DIGIT, "application/octet-stream")}},
        {"json": {"image": b64}},
        {"json": {"image": "data:image/png;base64," + b64}},
        {"content": DIGIT, "headers": {"content-type": "image/png"}},
    ]
    for kw in ways:
        r = client.post("/api/predict", **kw)
        assert r.status_code == 200, (kw.keys(), r.text)
        check_prediction(r.json(), DIGIT)
    jpeg = png(digit_image().convert("RGB"), "JPEG")
    r = client.post("/api/predict?top_k=5", files={"file": ("s.jpg", jpeg, "image/jpeg")})
    assert r.status_code == 200 and len(r.json()["top_k"]) == 5


def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(client: TestClient) -> None:
    post = lambda **kw: client.post("/api/predict", **kw)  # noqa: E731
    as_file = lambda data, mime="image/png", field="file": {  # noqa: E731
        "files": {field: ("x.png", data, mime)}}

    assert_error(post(**as_file(b"this is not an image")), 400, "unreadable_image")
    assert_error(post(**as_file(DIGIT[: len(DIGIT) // 2])), 400, "unreadable_image")
    assert_error(post(content=b"", headers={"content-type": "image/png"}), 400, "empty_body")
    assert_error(post(**as_file(b"")), 400, "empty_image")
    assert_error(post(), 400, "empty_body")  # no body, no content type
    big = np.random.default_rng(0).integers(0, 256, (500, 500), np.uint8)
    assert len(png(Image.fromarray(big))) > 200_000
    assert_error(post(**as_file(png(Image.fromarray(big)))), 413, "payload_too_large")
    assert_error(post(content=b"\0" * 400_000, headers={"content-type": "image/png"}), 413,
                 "payload_too_large")
    huge = png_header_only(50_000, 50_000)
    assert_error(post(**as_file(huge)), 413, "image_too_large")
    assert_error(post(**as_file(png_header_only(3000, 3000))), 413, "image_too_large")
    assert_error(post(**as_file(DIGIT, field="image")), 422, "missing_field")
    assert_error(post(data={"file": "not a file"}, files={"other": ("x", b"1")}), 422,
                 "missing_field")
    assert_error(post(json={"file": base64.b64encode(DIGIT).decode()}), 422, "missing_field")
    assert_error(post(json=[1, 2]), 422, "missing_field")
    assert_error(post(json={"image": 7}), 422, "missing_field")
    assert_error(post(json={"image": "@@not base64@@"}), 400, "invalid_base64")
    assert_error(post(json={"image": "data:text/plain;base64,aGk="}), 415)
    assert_error(post(json={"image": "data:image/png,rawtext"}), 400, "invalid_base64")
    assert_error(post(content=b"{nope", headers={"content-type": "application/json"}), 400,
                 "invalid_json")
    assert_error(post(content=b"\xff\xfe", headers={"content-type": "application/json"}), 400,
                 "invalid_json")
    assert_error(post(**as_file(DIGIT, mime="text/plain")), 415, "unsupported_media_type")
    assert_error(post(content=DIGIT, headers={"content-type": "text/csv"}), 415)
    assert_error(post(content=b"--x\r\nbroken", headers={  # lenient parser: no 'file' found
        "content-type": "multipart/form-data; boundary=x"}), (400, 422))
    assert_error(post(content=b"abc", headers={"content-type": "multipart/form-data"}), 400)
    assert_error(post(**as_file(png(Image.new("L", (64, 64), 255)))), 422, "blank_image")
    assert_error(post(**as_file(png(Image.new("L", (8, 8), 0), "TIFF"))), 400)
    assert_error(client.post("/api/predict?top_k=0", **as_file(DIGIT)), 422, "invalid_request")
    assert_error(client.post("/api/predict?top_k=x", **as_file(DIGIT)), 422, "invalid_request")
    assert_error(client.get("/api/predict"), 405, "method_not_allowed")
    assert_error(client.get("/api/nothing"), 404, "not_found")

    assert client.get("/api/health").status_code == 200
    assert client.post("/api/predict", **as_file(DIGIT)).json()["label"] == "7"


def test_inference_does_not_block_the_event_loop(trained_checkpoint: Path) -> None:
    # preprocessing in threads, so that a slow one can be put in (worker processes are
    # checked below: they run the same function)
    app = create_app(trained_checkpoint, worker_kind="thread")
    predictor, workers = app.state.predictor, app.state.workers
    original_prepare, original_arrays = workers.prepare, predictor.predict_arrays
    seen_threads: list[str] = []

    def slow_prepare(items):
        seen_threads.append(threading.current_thread().name)
        time.sleep(1.5)
        return original_prepare(items)

    def predict_arrays(*args, **kwargs):
        seen_threads.append(threading.current_thread().name)
        return original_arrays(*args, **kwargs)

    with TestClient(app, base_url="http://localhost") as c:
        # after the start-up check has run (an instance attribute shadows the method)
        workers.preparer.run, predictor.predict_arrays = slow_prepare, predict_arrays
        results: dict[str, int] = {}
        t = threading.Thread(target=lambda: results.setdefault(
            "predict", c.post("/api/predict", content=DIGIT,
                              headers={"content-type": "image/png"}).status_code))
        t.start()
        while not seen_threads:  # the slow preprocessing is running now
            time.sleep(0.01)
        t0 = time.perf_counter()
        assert c.get("/api/health").status_code == 200
        health_s = time.perf_counter() - t0
        t.join()
    assert results["predict"] == 200
    assert health_s < 1.0, f"health waited {health_s:.2f} s behind a running prediction"
    assert seen_threads[0].startswith("mnistlab-preprocess")
    assert seen_threads[1].startswith("mnistlab-inference")


def _die(items: list[tuple[str, bytes]]) -> None:
    """A preprocessing step that crashes its worker process (as a decoder bug would)."""
    os._exit(3)


def test_a_dead_preprocessing_worker_is_replaced(trained_checkpoint: Path) -> None:
    app = create_app(trained_checkpoint, workers=1)  # worker processes (the default kind)
    workers = app.state.workers
    post = lambda c: c.post("/api/predict", content=DIGIT,  # noqa: E731
                            headers={"content-type": "image/png"})
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as c:
        r = post(c)
        assert r.status_code == 200
        check_prediction(r.json(), DIGIT)  # the same input as preprocessing here
        first = workers.pool.submit(os.getpid).result()
        assert first != os.getpid()  # the work is done in another process

        os.kill(first, signal.SIGKILL)  # killed between requests: the next one is served
        r = post(c)
        assert r.status_code == 200 and r.json()["label"] == "7", r.text
        assert workers.pools_replaced == 1
        assert workers.pool.submit(os.getpid).result() not in (first, os.getpid())

        workers.preparer.run, prepare = _die, workers.preparer.run  # dies here, twice
        assert_error(post(c), 500, "worker_died")
        assert workers.pools_replaced == 3
        workers.preparer.run = prepare
        assert post(c).status_code == 200  # and the server carries on


def test_shutdown_waits_for_the_preprocessing_workers(trained_checkpoint: Path) -> None:
    """The app's shutdown returns only once its worker processes have exited: uvicorn ends
    the process with the signal it caught (SIGTERM from systemd, docker stop, kill) right
    after, and workers not yet stopped then were left behind for good."""
    before = set(multiprocessing.active_children())
    app = create_app(trained_checkpoint, workers=2)
    with TestClient(app, base_url="http://localhost") as c:
        r = c.post("/api/predict", content=DIGIT, headers={"content-type": "image/png"})
        assert r.status_code == 200
        workers = set(multiprocessing.active_children()) - before
        assert len(workers) == 2
    assert not [w for w in workers if w.is_alive()]


# ------------------------------------------------------------------------------ fuzz

MIMES = ["image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp",
         "application/octet-stream", "text/plain", "", "multipart/form-data", "application/json"]
MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff", b"BM", b"RIFF\0\0\0\0WEBP"]


def mutate(data: bytes, flips: list[tuple[int, int]], cut: int) -> bytes:
    b = bytearray(data)
    for pos, val in flips:
        b[pos % len(b)] = val
    return bytes(b[: max(0, len(b) - cut)])


bodies = st.one_of(
    st.tuples(st.sampled_from(MAGIC), st.binary(max_size=400)).map(lambda t: t[0] + t[1]),
    st.builds(mutate, st.just(DIGIT),
              st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
              st.integers(0, 200)),
    st.builds(mutate, st.just(png(digit_image(), "GIF")),
              st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
              st.integers(0, 50)),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(how=st.sampled_from(["multipart", "json", "raw", "json-text", "multipart-text"]),
       body=bodies, mime=st.sampled_from(MIMES), text=st.text(max_size=200))
def test_fuzz_upload_never_500(client: TestClient, how: str, body: bytes, mime: str,
                               text: str) -> None:
    if how == "multipart":
        r = client.post("/api/predict", files={"file": ("f", body, mime or "image/png")})
    elif how == "multipart-text":
        r = client.post("/api/predict", data={"file": text})
    elif how == "json":
        r = client.post("/api/predict", json={"image": f"data:{mime};base64,"
                                              + base64.b64encode(body).decode()})
    elif how == "json-text":
        r = client.post("/api/predict", content=text.encode(),
                        headers={"content-type": "application/json"})
    else:
        r = client.post("/api/predict", content=body, headers={"content-type": mime})
    assert r.status_code < 500, r.text
    assert r.status_code == 200 or set(r.json()) == {"error", "message"}
