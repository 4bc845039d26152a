"""The web app: a drawing page and a small JSON API over one ``Predictor``.

    GET  /              the drawing page (static/index.html, app.js, style.css)
    POST /api/predict   an image: multipart field ``file``, JSON {"image": base64 or data URL},
                        or the raw bytes with an image/* content type
    GET  /api/health    liveness
    GET  /api/model     the checkpoint's metadata (minus anything bulky) and the limits
    GET  /docs, /openapi.json   FastAPI's generated API description

Every bad request is answered with a 4xx and ``{"error": CODE, "message": TEXT}``.
Preprocessing and inference run in worker threads (bounded by ``workers``) so the event
loop keeps serving; the body is read with a byte limit, and images are size-checked from
their header before decoding (decompression bombs).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..predict import DEFAULT_THRESHOLD, DEFAULT_TOP_K, Predictor
from ..preprocess import (
    MIME_TYPES,
    EmptyImageError,
    ImageTooLargeError,
    PreprocessError,
    to_png,
)
from . import MAX_PIXELS, MAX_UPLOAD_BYTES

STATIC = Path(__file__).parent / "static"
BASE64_SLACK = 64 * 1024  # JSON/multipart framing on top of the (base64-grown) image
BULKY_LIST = 64  # metadata lists longer than this are summarized in /api/model

log = logging.getLogger("mnistlab.serve")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


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
        400: "malformed body, undecodable image or bad base64",
        413: "upload or image dimensions too large",
        415: "unsupported content type",
        422: "missing field, bad parameter, or a blank image",
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


def public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint metadata without training state, with long lists summarized."""

    def trim(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: trim(x) for k, x in v.items()}
        if isinstance(v, list):
            return f"<{len(v)} values>" if len(v) > BULKY_LIST else [trim(x) for x in v]
        return v

    return {k: trim(v) for k, v in meta.items() if k not in ("train_state", "train_state_file")}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing it (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large",
                       f"request body of {int(declared):,} bytes is over the {limit:,} limit")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "payload_too_large",
                               f"request body is over the {limit:,} byte limit")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away mid-upload") from None
    return b"".join(chunks)


def _accepted_media(mime: str) -> bool:
    return mime in MIME_TYPES or mime in ("", "application/octet-stream", "image/jpg")


async def image_from_multipart(scope: dict, body: bytes) -> bytes:
    async def replay() -> dict:  # the body was already read (with a limit); parse it again
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, replay).form(max_files=4, max_fields=16)
    except Exception as e:  # any parser failure on untrusted bytes is a malformed body
        detail = getattr(e, "detail", None) or getattr(e, "message", None) or str(e)
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {detail}") from None
    try:
        upload = form.get("file")
        if upload is None:
            got = ", ".join(repr(k) for k in form.keys()) or "none"
            raise ApiError(422, "missing_field",
                           f"expected the image in a multipart field named 'file'; got: {got}")
        if isinstance(upload, str):
            raise ApiError(422, "missing_field", "field 'file' must be a file upload, not text")
        mime = (upload.content_type or "").split(";")[0].strip().lower()
        if not _accepted_media(mime):
            raise ApiError(415, "unsupported_media_type",
                           f"file type {mime!r} is not accepted; send {', '.join(MIME_TYPES)}")
        return await upload.read()
    finally:
        await form.close()


def image_from_json(body: bytes) -> bytes:
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, "invalid_json", f"body is not valid JSON ({e})") from None
    if not isinstance(obj, dict) or "image" not in obj:
        raise ApiError(422, "missing_field",
                       'expected a JSON object {"image": "<base64 image or data URL>"}')
    text = obj["image"]
    if not isinstance(text, str):
        raise ApiError(422, "missing_field", "'image' must be a string (base64 or a data URL)")
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        mime = header[5:].split(";")[0].strip().lower()
        if not sep or not header.endswith(";base64"):
            raise ApiError(400, "invalid_base64", "a data URL must be 'data:<type>;base64,...'")
        if not _accepted_media(mime):
            raise ApiError(415, "unsupported_media_type",
                           f"data URL type {mime!r} is not accepted; send {', '.join(MIME_TYPES)}")
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", "'image' is not valid base64") from None


# ------------------------------------------------------------------------------ the app


def create_app(checkpoint_path: str | Path, *, threshold: float = DEFAULT_THRESHOLD,
               top_k: int = DEFAULT_TOP_K, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_pixels: int = MAX_PIXELS, workers: int | None = None,
               torch_threads: int | None = 1, device: str = "cpu") -> FastAPI:
    """The app for one checkpoint (a run directory or a checkpoint path).

    ``workers`` bounds concurrent preprocessing + inference threads (default: CPU count, at
    most 4), which also bounds the memory that big uploads can take at once.
    ``torch_threads``: intra-op threads for each worker (None: torch's default). One image
    per call gains nothing from intra-op threads and loses much to their wake-ups under load
    (measured: 11 ms instead of 0.2 ms for a small MLP on a busy 2-core machine); the
    parallelism is across requests instead. Set per worker thread (OpenMP's setting is
    per thread), so the embedding process's own torch threads are left alone.
    """
    predictor = Predictor.load(checkpoint_path, device=device, threshold=threshold,
                               top_k=top_k, max_pixels=max_pixels)
    classes = predictor.classes
    workers = workers or min(4, os.cpu_count() or 1)
    body_limit = max_upload_bytes * 4 // 3 + BASE64_SLACK
    meta = predictor.meta
    app = FastAPI(
        title="mnistlab",
        version=str(meta.get("versions", {}).get("mnistlab", "")),
        description=f"Classify handwritten digits with {meta['model']!r} "
                    f"trained on {meta.get('dataset', '?')!r}.",
    )
    app.state.predictor = predictor
    state: dict[str, anyio.CapacityLimiter] = {}

    def limiter() -> anyio.CapacityLimiter:  # created inside the event loop, on first use
        if "limiter" not in state:
            state["limiter"] = anyio.CapacityLimiter(workers)
        return state["limiter"]

    local = threading.local()

    def infer(image: bytes, top_k: int | None):  # runs in a worker thread
        if torch_threads and predictor.checkpoint.engine == "torch" \
                and getattr(local, "threads", None) != torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
            local.threads = torch_threads
        return predictor.predict_one(image, top_k=top_k)

    # -------------------------------------------------------------- errors: always JSON

    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": code, "message": message}, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.code, exc.message)

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
        """The checkpoint's metadata (without training state or long lists) and the limits."""
        return {
            **public_meta(meta),
            "serving": {
                "threshold": predictor.threshold, "top_k": predictor.top_k,
                "max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels,
                "accepted_types": list(MIME_TYPES), "input_size": [28, 28],
            },
        }

    @app.post("/api/predict", response_model=PredictionOut, responses=_ERRORS,
              openapi_extra={"requestBody": _REQUEST_BODY})
    async def predict(request: Request,
                      top_k: int | None = Query(None, ge=1, le=len(classes),
                                                description="alternatives to return")) -> dict:
        """Classify one image (PNG, JPEG, BMP, GIF first frame, WebP)."""
        mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if mime not in ("multipart/form-data", "application/json") and not _accepted_media(mime):
            raise ApiError(415, "unsupported_media_type",
                           f"content type {mime!r} is not accepted; send multipart/form-data "
                           "(field 'file'), application/json ({'image': base64}) or image/*")
        body = await read_body(request, body_limit)
        if not body:
            raise ApiError(400, "empty_body", "the request body is empty; send an image")
        if mime == "multipart/form-data":
            image = await image_from_multipart(request.scope, body)
        elif mime == "application/json":
            image = image_from_json(body)
        else:
            image = body
        if not image:
            raise ApiError(400, "empty_image", "the image is empty (0 bytes)")
        if len(image) > max_upload_bytes:
            raise ApiError(413, "payload_too_large",
                           f"image of {len(image):,} bytes is over the {max_upload_bytes:,} limit")
        try:
            pred = await anyio.to_thread.run_sync(functools.partial(infer, image, top_k),
                                                  limiter=limiter())
        except ImageTooLargeError as e:
            raise ApiError(413, "image_too_large", str(e)) from None
        except EmptyImageError as e:
            raise ApiError(422, "blank_image", str(e)) from None
        except PreprocessError as e:
            raise ApiError(400, "unreadable_image", str(e)) from None
        out = pred.to_dict(classes, with_input=True)
        out["input_png"] = "data:image/png;base64," + base64.b64encode(
            to_png(pred.input)).decode()
        return out

    return app
