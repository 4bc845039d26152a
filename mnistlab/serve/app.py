"""The web app: a drawing page and a small JSON API over one ``Predictor``.

    GET  /              the drawing page (static/index.html, app.js, style.css)
    POST /api/predict   an image: multipart field ``file``, JSON {"image": base64 or data URL},
                        or the raw bytes with an image/* content type
    GET  /api/health    liveness
    GET  /api/model     the checkpoint's metadata (no paths, no environment) and the limits
    GET  /docs, /openapi.json   FastAPI's generated API description (``docs=False``: none)

Every bad request is answered with a 4xx and ``{"error": CODE, "message": TEXT}``.

How a prediction is served (the event loop only moves bytes and futures):

    body read with a byte limit and a deadline (413, 408)
    -> preprocessing workers (processes by default; bodies.prepare_image): image bytes out
       of the body, decode, 28x28 (4xx errors). Bodies that arrive while every worker is
       busy go to the next free one together (up to PREPARE_BATCH), so under load the trip
       to a worker process and back is paid once per batch, not once per request. A worker
       process that dies (a decoder crash) is replaced and the requests it held are tried
       once more on the new ones, each alone.
    -> micro-batcher (batching.py): images of concurrent requests, one forward pass on one
       inference thread, padded so that a digit's answer never depends on its company
    -> JSON

Every request first passes the Host check and the bound on requests in progress (guards.py).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import logging
import multiprocessing
import re
from collections.abc import AsyncIterator
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import ConfigError
from ..predict import DEFAULT_THRESHOLD, DEFAULT_TOP_K, Prediction, Predictor
from ..preprocess import MIME_TYPES
from .batching import PAD_MULTIPLES, MicroBatcher, batch_invariant, padded_size
from .bodies import ApiError, accepted_media, prepare_images
from .guards import Guard
from .options import ServeOptions

STATIC = Path(__file__).parent / "static"
BASE64_SLACK = 64 * 1024  # JSON/multipart framing on top of the (base64-grown) image
BULKY_LIST = 64  # metadata lists longer than this are summarized in /api/model
PREPARE_BATCH = 8  # request bodies sent to a preprocessing worker at once, at most

log = logging.getLogger("mnistlab.serve")


# ------------------------------------------------------------------------------ schema


class ErrorOut(BaseModel):
    error: str = Field(description="a stable machine-readable code, e.g. 'blank_image'")
    message: str = Field(description="what was wrong, for people")


class TopK(BaseModel):
    label: str
    probability: float


class PredictionOut(BaseModel):
    label: str = Field(description="the predicted class name")
    index: int = Field(description="its class index")
    confidence: float = Field(description="its probability (calibrated when the model is)")
    unsure: bool = Field(description="confidence is below the server's threshold")
    ood_score: float | None = Field(
        None, description="'not a digit' score 0..1: the share of validation digits that look "
                          "more digit-like (0.5 typical); null if the model is not calibrated")
    not_digit: bool | None = Field(
        None, description="ood_score is at or above the model's threshold (0.99)")
    top_k: list[TopK]
    probabilities: dict[str, float] = Field(description="class name -> probability")
    input: list[list[int]] = Field(description="the 28x28 image the model saw, 0..255, ink high")
    input_png: str = Field(description="the same image as a PNG data URL")


class HealthOut(BaseModel):
    status: str
    model: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text} for code, text in {
        400: "malformed body, undecodable image, bad base64, or a Host not served here",
        408: "the request body did not arrive in time",
        413: "upload or image dimensions too large",
        415: "unsupported content type",
        422: "missing field, bad parameter, or a blank image",
        503: "too many requests in progress; retry after the Retry-After seconds",
    }.items()
}

_REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"}}}},
        "application/json": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {"image": {
                "type": "string",
                "description": "base64 image bytes, or a data URL (data:image/png;base64,...)"}}}},
        **{m: {"schema": {"type": "string", "format": "binary"}} for m in MIME_TYPES},
    },
}


# ------------------------------------------------------------------------------ helpers

PRIVATE_KEYS = {"train_state", "train_state_file"}  # training state: not the client's business
PATH_KEYS = {"path", "source", "data_dir"}  # where files were on the training machine
ENVIRONMENT_KEYS = {"versions", "code_version"}  # library versions and the git commit


def _no_path(s: str) -> str:
    """A path-like string cut to its last part: '/home/me/digits:0-4' -> 'digits:0-4'."""
    return re.split(r"[/\\]", s.rstrip("/\\"))[-1] if ("/" in s or "\\" in s) else s


def public_meta(meta: dict[str, Any], *, expose_versions: bool = False) -> dict[str, Any]:
    """Checkpoint metadata fit to show anyone: no training state, no paths of the training
    machine (a folder dataset is named by its last part), no library versions or git commit
    unless ``expose_versions``; long lists summarized."""
    drop = PRIVATE_KEYS | PATH_KEYS | (set() if expose_versions else ENVIRONMENT_KEYS)

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if k not in drop}
        if isinstance(v, list):
            return f"<{len(v)} values>" if len(v) > BULKY_LIST else [clean(x) for x in v]
        return _no_path(v) if isinstance(v, str) else v

    return clean(meta)


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes and with
    408 when it has not all arrived ``timeout`` seconds after the headers."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large",
                       f"request body of {int(declared):,} bytes is over the {limit:,} limit")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "payload_too_large",
                                   f"request body is over the {limit:,} byte limit")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, "body_timeout", f"the request body did not arrive within "
                       f"{timeout:g} s ({size:,} bytes came)", {"connection": "close"}) from None
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away mid-upload") from None
    return b"".join(chunks)


class Workers:
    """The preprocessing workers, the inference thread and the micro-batcher: started with
    the app (or on first use), closed at shutdown."""

    def __init__(self, predictor: Predictor, opts: ServeOptions):
        self.predictor, self.opts = predictor, opts
        self.multiple = PAD_MULTIPLES[0]  # batches are padded to a multiple of this
        self.batcher: MicroBatcher[np.ndarray, Prediction] | None = None
        self.pool: Executor | None = None
        self.inference: ThreadPoolExecutor | None = None
        self.prepare = functools.partial(prepare_images, max_upload_bytes=opts.max_upload_bytes,
                                         max_pixels=opts.max_pixels)
        self.preparer: MicroBatcher[tuple[str, bytes], Any] | None = None
        self.pools_replaced = 0

    def _new_pool(self) -> Executor:
        n = self.opts.preprocess_workers
        if self.opts.worker_kind == "thread":
            return ThreadPoolExecutor(n, "mnistlab-preprocess")
        # spawn, not fork: this process runs torch's and uvicorn's threads already
        pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))
        for _ in range(n):  # start them all now rather than on the first requests
            pool.submit(int)
        return pool

    def _replace_broken_pool(self) -> None:
        """New workers if the pool is broken (a worker process died); else nothing, so that
        of several requests that saw the same death only the first replaces it."""
        try:
            self.pool.submit(int)  # a broken pool refuses new work at once
            return
        except BrokenExecutor:
            pass
        log.error("a preprocessing worker died; starting new ones")
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self.preparer.executor = self._new_pool()
        self.pools_replaced += 1

    async def preprocess(self, content_type: str, body: bytes) -> tuple[np.ndarray, bytes]:
        """A request body -> (the (28, 28) input, its PNG), in a worker, batched with the
        bodies that wait beside it. If the worker process dies meanwhile, the pool (broken
        for every request it held) is replaced and the body tried once more, alone; a
        second death is a 500."""
        item = (content_type, body)
        try:
            result = await self.preparer.submit(item)
        except BrokenExecutor:
            self._replace_broken_pool()
            try:
                [result] = await asyncio.get_running_loop().run_in_executor(
                    self.pool, self.preparer.run, [item])
            except BrokenExecutor:
                self._replace_broken_pool()
                raise ApiError(500, "worker_died", "the preprocessing worker died while "
                               "handling this image (twice); it may crash the decoder") from None
        if isinstance(result, ApiError):
            raise result
        return result

    def _init_inference_thread(self) -> None:
        # One image or a small batch gains nothing from intra-op threads and loses much to
        # their wake-ups under load; set for this thread (OpenMP's setting is per thread),
        # so an embedding process's own torch threads are left alone.
        if self.opts.torch_threads and self.predictor.checkpoint.engine == "torch":
            import torch

            torch.set_num_threads(self.opts.torch_threads)

    def classify(self, images: list[np.ndarray]) -> list[Prediction]:
        """(28, 28) images -> predictions with every class in top_k (inference thread)."""
        n = len(images)
        x = np.zeros((padded_size(n, self.opts.max_batch, self.multiple), 28, 28), np.float32)
        x[:n] = images  # blank padding rows: see batching.py
        return self.predictor.predict_arrays(x, top_k=len(self.predictor.classes))[:n]

    def _probabilities(self, x: np.ndarray) -> np.ndarray:
        return np.stack([p.probabilities for p in self.predictor.predict_arrays(x)])

    def start(self) -> None:
        if self.batcher is not None:
            return
        self.pool = self._new_pool()
        # no window: a lone body goes at once; under load bodies gather while workers are busy
        self.preparer = MicroBatcher(self.prepare, executor=self.pool, max_batch=PREPARE_BATCH,
                                     window_s=0, concurrency=self.opts.preprocess_workers)
        self.inference = ThreadPoolExecutor(1, "mnistlab-inference",
                                            initializer=self._init_inference_thread)
        # Checked on the inference thread itself: kernels may depend on its thread count.
        for multiple in PAD_MULTIPLES:
            if self.inference.submit(batch_invariant, self._probabilities,
                                     self.opts.max_batch, multiple).result():
                self.multiple = multiple
                break
        else:
            self.multiple = self.opts.max_batch
            log.warning("this model's results depend on the batch size; every batch is "
                        "padded to --max-batch %d rows", self.opts.max_batch)
        self.batcher = MicroBatcher(self.classify, executor=self.inference,
                                    max_batch=self.opts.max_batch,
                                    window_s=self.opts.batch_window_ms / 1000)

    def close(self) -> None:
        if self.batcher is not None and self.batcher.batches:
            b = self.batcher
            log.info("classified %d images in %d batches (mean %.1f, largest %d)",
                     b.items, b.batches, b.mean_batch, b.largest)
        if self.preparer is not None and self.preparer.batches:
            b = self.preparer
            log.info("preprocessed %d bodies in %d trips to the workers (mean %.1f)",
                     b.items, b.batches, b.mean_batch)
        if self.pool is not None:
            # Wait for the worker processes to exit: uvicorn ends the process with the
            # signal it caught right after this, and workers not yet told to stop would be
            # left behind, orphaned (they hold their own queue open, so they never see EOF).
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.inference is not None:
            self.inference.shutdown(wait=False, cancel_futures=True)
        self.batcher = self.preparer = self.pool = self.inference = None


# ------------------------------------------------------------------------------ the app


def create_app(checkpoint_path: str | Path, *, threshold: float = DEFAULT_THRESHOLD,
               top_k: int = DEFAULT_TOP_K, device: str = "cpu",
               options: ServeOptions | None = None, runtime: str = "torch",
               **settings: Any) -> FastAPI:
    """The app for one checkpoint (a run directory or a checkpoint path).

    ``runtime="onnx"``: the run's ONNX export (or a .onnx file) run by ONNX Runtime.

    ``options`` (or keywords naming its fields, e.g. ``max_upload_bytes=200_000``,
    ``docs=False``): the limits, batching and exposure settings; see ``ServeOptions``.
    Raises ``ConfigError`` for a bad setting and ``CheckpointError`` for a bad checkpoint.
    """
    known = {f.name for f in dataclasses.fields(ServeOptions)}
    if unknown := sorted(set(settings) - known):
        raise ConfigError(f"create_app: unknown setting(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    opts = dataclasses.replace(options or ServeOptions(), **settings)
    predictor = Predictor.load(checkpoint_path, device=device, threshold=threshold,
                               top_k=top_k, max_pixels=opts.max_pixels, runtime=runtime,
                               threads=1 if runtime == "onnx" else None)
    classes = predictor.classes
    body_limit = opts.max_upload_bytes * 4 // 3 + BASE64_SLACK
    meta = predictor.meta
    shown_meta = public_meta(meta, expose_versions=opts.expose_versions)
    workers = Workers(predictor, opts)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        workers.start()
        yield
        workers.close()

    app = FastAPI(
        title="mnistlab",
        version=str(meta.get("versions", {}).get("mnistlab", "")) if opts.expose_versions
        else "1",
        description=f"Classify handwritten digits with {shown_meta['model']!r} "
                    f"trained on {shown_meta.get('dataset', '?')!r}.",
        docs_url="/docs" if opts.docs else None,
        redoc_url="/redoc" if opts.docs else None,
        openapi_url="/openapi.json" if opts.docs else None,
        lifespan=lifespan,
    )
    app.state.predictor = predictor
    app.state.options = opts
    app.state.workers = workers
    app.add_middleware(Guard, allowed_hosts=opts.allowed_hosts,
                       allow_ip_hosts=opts.allow_ip_hosts, max_concurrent=opts.max_concurrent)

    # -------------------------------------------------------------- errors: always JSON

    def error(status: int, code: str, message: str,
              headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": code, "message": message}, status_code=status,
                            headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error(exc.status_code, codes.get(exc.status_code, f"http_{exc.status_code}"),
                     str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
                 for e in exc.errors()]
        return error(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:  # a bug: say so
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error(500, "internal_error", f"internal error ({type(exc).__name__})")

    # -------------------------------------------------------------- routes

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health", response_model=HealthOut)
    async def health() -> dict:
        return {"status": "ok", "model": meta["model"]}

    @app.get("/api/model")
    async def model_info() -> dict:
        """The checkpoint's metadata (no training state, paths or environment details;
        long lists summarized) and the limits."""
        return {
            **shown_meta,
            "serving": {
                "threshold": predictor.threshold, "top_k": predictor.top_k,
                "max_upload_bytes": opts.max_upload_bytes, "max_pixels": opts.max_pixels,
                "accepted_types": list(MIME_TYPES), "input_size": [28, 28],
                "max_batch": opts.max_batch,
            },
        }

    @app.post("/api/predict", response_model=PredictionOut, responses=_ERRORS,
              openapi_extra={"requestBody": _REQUEST_BODY})
    async def predict(request: Request,
                      top_k: int | None = Query(None, ge=1, le=len(classes),
                                                description="alternatives to return")
                      ) -> JSONResponse:
        """Classify one image (PNG, JPEG, BMP, GIF first frame, WebP)."""
        content_type = request.headers.get("content-type", "")
        mime = content_type.split(";")[0].strip().lower()
        if mime not in ("multipart/form-data", "application/json") and not accepted_media(mime):
            raise ApiError(415, "unsupported_media_type",
                           f"content type {mime!r} is not accepted; send multipart/form-data "
                           "(field 'file'), application/json ({'image': base64}) or image/*")
        body = await read_body(request, body_limit, opts.body_timeout)
        workers.start()  # no-op once the lifespan has started them
        x, png = await workers.preprocess(content_type, body)
        pred = await workers.batcher.submit(x)
        k = predictor.top_k if top_k is None else top_k
        pred = dataclasses.replace(pred, top_k=pred.top_k[:k])
        out = pred.to_dict(classes)
        out["input"] = pred.input_u8()  # an array: orjson writes it without a nested list
        out["input_png"] = "data:image/png;base64," + base64.b64encode(png).decode()
        # built here (the schema above is for the docs); orjson writes the 784 pixel values
        # ~15x faster than the json module, on the event loop's thread
        return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")

    return app


def server_config(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000,
                  log_level: str = "info", access_log: bool = True) -> Any:
    """uvicorn's settings for ``app``: at most ``max_connections`` open connections (a
    request on one more gets uvicorn's plain 503) and as many waiting to be accepted, idle
    keep-alive connections closed after 5 s, no ``server`` header."""
    import uvicorn

    limit = app.state.options.max_connections
    # uvicorn answers 503 once its connections (this one included) reach limit_concurrency
    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          access_log=access_log, server_header=False,
                          limit_concurrency=limit + 1, backlog=limit, timeout_keep_alive=5)
