"""The checks every request passes before the app sees it (a plain ASGI middleware):

- its ``Host`` header names this server (``allowed_hosts``), else 400 ``bad_host``. A page
  on another site can make a browser send requests to a local server by pointing its own
  domain at 127.0.0.1 (DNS rebinding); such requests carry that domain as their Host.
- at most ``max_concurrent`` requests are in progress, else 503 ``busy`` with Retry-After,
  so a flood cannot make the server hold unbounded bodies and images in memory.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .options import host_allowed, normalize_host

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


async def send_json_error(send: Callable, status: int, code: str, message: str,
                          headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": code, "message": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: ASGIApp, *, allowed_hosts: tuple[str, ...], allow_ip_hosts: bool,
                 max_concurrent: int):
        self.app = app
        self.allowed = tuple(normalize_host(h) if h != "*" else h for h in allowed_hosts)
        self.allow_ip, self.max_concurrent = allow_ip_hosts, max_concurrent
        self.in_flight = 0  # one event loop: no lock needed

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":  # lifespan
            return await self.app(scope, receive, send)
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        if not host_allowed(host, self.allowed, self.allow_ip):
            shown = host[:100] or "(none)"
            return await send_json_error(
                send, 400, "bad_host",
                f"Host {shown!r} is not served here; if this server should answer to that "
                "name, start it with --allowed-host NAME", {"connection": "close"})
        if self.in_flight >= self.max_concurrent:
            return await send_json_error(
                send, 503, "busy", f"the server is busy ({self.max_concurrent} requests in "
                "progress); try again shortly", {"retry-after": "1"})
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
