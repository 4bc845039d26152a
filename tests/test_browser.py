"""The drawing page in a real browser: Debian's Chromium driven by Playwright for Python.

Starts the real server (uvicorn in a thread on 127.0.0.1, a free port), draws a 7 with the
mouse, and checks that a prediction, the probability chart and the 28x28 input appear; then
uploads a file and clears. Saves a screenshot to tests/artifacts/ (gitignored).
Never runs ``playwright install``: it uses /usr/bin/chromium (apt-get install chromium).
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(trained_checkpoint: Path) -> Iterator[str]:
    uvicorn = pytest.importorskip("uvicorn")
    from mnistlab.serve.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(trained_checkpoint), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.mark.slow  # the fast lane's budget (pytest -m 'not slow', ~2 min)
def test_draw_a_digit_and_see_the_prediction(server_url: str, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 900, "height": 640})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error"
            else None)
    sent: list[str] = []  # the drawings the page posts, as data URLs
    page.on("request", lambda r: sent.append(json.loads(r.post_data)["image"])
            if r.url.endswith("/api/predict") and r.method == "POST"
            and r.headers.get("content-type", "").startswith("application/json") else None)
    page.goto(server_url + "/")
    page.wait_for_selector("body[data-state=ready]", timeout=10_000)
    assert page.locator("#chart .row").count() == 10

    # A 7 with the mouse: the top bar, then the long diagonal, in small moves.
    box = page.locator("#pad").bounding_box()
    at = lambda fx, fy: (box["x"] + fx * box["width"], box["y"] + fy * box["height"])  # noqa
    page.mouse.move(*at(0.28, 0.22))
    page.mouse.down()
    page.mouse.move(*at(0.72, 0.22), steps=12)
    page.mouse.move(*at(0.42, 0.82), steps=16)
    page.mouse.up()

    page.wait_for_selector("body[data-state=predicted]", timeout=10_000)
    page.wait_for_timeout(400)  # let the last throttled request land
    label = page.locator("#label").inner_text()
    widths = page.eval_on_selector_all(
        "#chart .fill", "els => els.map(e => parseFloat(e.style.width) || 0)")
    assert label in [str(i) for i in range(10)]
    assert len(widths) == 10 and abs(sum(widths) - 100) < 2, widths
    assert page.locator(f"#chart .row.top[data-label='{label}']").count() == 1
    assert page.locator("#seen").is_visible()
    assert page.get_attribute("#seen", "src").startswith("data:image/png;base64,")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-draw.png"), full_page=True)
    assert label == "7", f"drew a 7, the model said {label} (bars: {widths})"
    # The drawing travels at 2/5 of the canvas's size (app.js SEND_SIZE), smoothed, not cut.
    assert sent, "the page posted no drawing"
    drawn = Image.open(io.BytesIO(base64.b64decode(sent[-1].split(",", 1)[1])))
    assert drawn.size == (112, 112)
    ink = 255 - np.asarray(drawn.convert("L"), np.float32)
    rows, cols = np.flatnonzero(ink.max(1) > 128), np.flatnonzero(ink.max(0) > 128)
    assert rows[0] > 0.1 * 112 and rows[-1] < 0.95 * 112 and cols[-1] - cols[0] > 0.3 * 112

    # Clear resets everything; then an uploaded file is classified.
    page.click("#clear")
    page.wait_for_selector("body[data-state=empty]")
    assert page.locator("#label").inner_text() == "\u2013"
    img = Image.new("RGB", (200, 240), "white")
    ImageDraw.Draw(img).line([(100, 30), (100, 210)], fill="black", width=16)
    img.save(tmp_path / "one.jpg", quality=90)
    page.set_input_files("#file", str(tmp_path / "one.jpg"))
    page.wait_for_selector("body[data-state=predicted]", timeout=10_000)
    assert "one.jpg" in page.locator("#status").inner_text()
    assert page.locator("#label").inner_text() == "1"
    page.wait_for_timeout(300)  # bar transitions
    page.screenshot(path=str(ARTIFACTS / "browser-upload.png"), full_page=True)
    assert not problems, problems
    page.close()
