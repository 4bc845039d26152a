"""From a request body to the model's input: the image bytes out of multipart (field
``file``), JSON ``{"image": base64 or data URL}`` or a raw ``image/*`` body, then the one
preprocessing path (preprocess.py). Plain functions on bytes already read (with a size
limit), so they run in a preprocessing worker (a process, or a thread), off the event loop;
this module imports neither FastAPI nor torch, so a worker process starts light.

Each refusal is an ``ApiError`` with the status, a stable code and a message for people.
"""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
from python_multipart.multipart import MultipartParser, parse_options_header

from ..preprocess import (
    MIME_TYPES,
    EmptyImageError,
    ImageTooLargeError,
    PreprocessError,
    preprocess_image,
    to_png,
)

MAX_PARTS = 16  # multipart parts in one request


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers

    def __reduce__(self):  # raised in a preprocessing process, re-raised in the server's
        return ApiError, (self.status, self.code, self.message, self.headers)


def accepted_media(mime: str) -> bool:
    return mime in MIME_TYPES or mime in ("", "application/octet-stream", "image/jpg")


def _unsupported(what: str, mime: str) -> ApiError:
    return ApiError(415, "unsupported_media_type",
                    f"{what} {mime!r} is not accepted; send {', '.join(MIME_TYPES)}")


def extract_image(content_type: str, body: bytes, max_upload_bytes: int) -> bytes:
    """The image bytes in a request body of ``content_type`` (its media type was checked)."""
    mime = content_type.split(";")[0].strip().lower()
    if not body:
        raise ApiError(400, "empty_body", "the request body is empty; send an image")
    if mime == "multipart/form-data":
        image = image_from_multipart(content_type, body)
    elif mime == "application/json":
        image = image_from_json(body)
    else:
        image = body
    if not image:
        raise ApiError(400, "empty_image", "the image is empty (0 bytes)")
    if len(image) > max_upload_bytes:
        raise ApiError(413, "payload_too_large",
                       f"image of {len(image):,} bytes is over the {max_upload_bytes:,} limit")
    return image


def prepare_image(content_type: str, body: bytes, *, max_upload_bytes: int,
                  max_pixels: int) -> tuple[np.ndarray, bytes]:
    """A request body -> (the (28, 28) model input, that input as a PNG); every bad body or
    image is an ``ApiError`` (413 too large, 422 blank, 400 unreadable, ...)."""
    image = extract_image(content_type, body, max_upload_bytes)
    try:
        x = preprocess_image(image, max_pixels=max_pixels)
    except ImageTooLargeError as e:
        raise ApiError(413, "image_too_large", str(e)) from None
    except EmptyImageError as e:
        raise ApiError(422, "blank_image", str(e)) from None
    except PreprocessError as e:
        raise ApiError(400, "unreadable_image", str(e)) from None
    return x, to_png(x)


def prepare_images(items: list[tuple[str, bytes]], **limits: int
                   ) -> list[tuple[np.ndarray, bytes] | ApiError]:
    """``prepare_image`` for several (content type, body) pairs in one call (one trip to a
    worker process and back); a bad body's ``ApiError`` is returned in its place."""
    out: list[tuple[np.ndarray, bytes] | ApiError] = []
    for content_type, body in items:
        try:
            out.append(prepare_image(content_type, body, **limits))
        except ApiError as e:
            out.append(e)
    return out


# ------------------------------------------------------------------------------ multipart


class _Parts:
    """python-multipart's callbacks, collecting each part's headers and data in memory
    (the body is in memory already, and bounded)."""

    def __init__(self) -> None:
        self.parts: list[dict] = []
        self.ended = False  # the closing boundary was seen
        self._name = self._value = b""

    def callbacks(self) -> dict:
        return {"on_part_begin": self.begin, "on_part_data": self.data,
                "on_header_field": self.field, "on_header_value": self.value,
                "on_header_end": self.header_end, "on_end": self.end}

    def begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise ApiError(400, "bad_multipart", f"more than {MAX_PARTS} multipart parts")
        self.parts.append({"headers": {}, "data": []})

    def data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1]["data"].append(data[start:end])

    def field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        self.parts[-1]["headers"][self._name.strip().lower()] = self._value.strip()
        self._name = self._value = b""

    def end(self) -> None:
        self.ended = True


def image_from_multipart(content_type: str, body: bytes) -> bytes:
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "malformed multipart body: the content type "
                       "has no boundary")
    form = _Parts()
    try:
        MultipartParser(boundary, form.callbacks()).write(body)
    except ApiError:
        raise
    except Exception as e:  # any parser failure on untrusted bytes is a malformed body
        raise ApiError(400, "bad_multipart", f"malformed multipart body ({e})") from None
    if not form.ended:
        raise ApiError(400, "bad_multipart", "malformed multipart body: no closing boundary "
                       f"(--{boundary.decode('latin-1')}--); was it cut short?")
    names = []
    for part in form.parts:
        disposition, opts = parse_options_header(
            part["headers"].get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in opts:
            raise ApiError(400, "bad_multipart", "malformed multipart body: a part without "
                           "'Content-Disposition: form-data; name=...'")
        name = opts[b"name"].decode("utf-8", "replace")
        if name != "file":
            names.append(name)
            continue
        if b"filename" not in opts:
            raise ApiError(422, "missing_field", "field 'file' must be a file upload, not text")
        mime = part["headers"].get(b"content-type", b"").decode("latin-1")
        mime = mime.split(";")[0].strip().lower()
        if not accepted_media(mime):
            raise _unsupported("file type", mime)
        return b"".join(part["data"])
    got = ", ".join(repr(n) for n in names) or "none"
    raise ApiError(422, "missing_field",
                   f"expected the image in a multipart field named 'file'; got: {got}")


# ------------------------------------------------------------------------------ JSON


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
        if not accepted_media(mime):
            raise _unsupported("data URL type", mime)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_base64", "'image' is not valid base64") from None
