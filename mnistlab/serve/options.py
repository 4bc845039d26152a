"""The server's settings: one frozen dataclass, checked when it is made (a leaf module: no
FastAPI, NumPy or torch, so ``mnistlab serve --help`` stays fast).

``mnistlab serve`` fills it from its flags; ``create_app(..., **fields)`` from keywords.
A bad value raises ``ConfigError`` naming the flag (``--max-batch: must be >= 1, got 0``).
"""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, fields

from ..errors import ConfigError
from ..limits import SERVE_MAX_PIXELS, SERVE_MAX_UPLOAD_BYTES

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")
# Preprocessing (decode, ink, layout: ~80% of a request's CPU time) runs in worker processes
# by default: Python threads share one interpreter lock, and on 2 cores they left ~25% of the
# CPU idle under load; "thread" keeps it in the server process (less memory, no start-up).
WORKER_KINDS = ("process", "thread")


@dataclass(frozen=True)
class ServeOptions:
    # --- requests
    max_upload_bytes: int = SERVE_MAX_UPLOAD_BYTES  # largest image file accepted
    max_pixels: int = SERVE_MAX_PIXELS  # width * height, checked from the header
    body_timeout: float = 10.0  # s to receive a whole request body, else 408
    max_concurrent: int = 64  # requests in progress at once; more are answered 503
    max_connections: int = 256  # open connections (uvicorn's limit; more are answered 503)
    # --- work
    workers: int | None = None  # preprocessing workers (None: CPU count, at most 4)
    worker_kind: str = "process"  # "process": worker processes; "thread": server threads
    torch_threads: int | None = 1  # intra-op threads of the inference thread (None: torch's)
    max_batch: int = 32  # images classified in one forward pass, at most
    batch_window_ms: float = 2.0  # how long a lone request waits for others to join it
    # --- exposure
    allowed_hosts: tuple[str, ...] = LOCAL_HOSTS  # Host headers answered (DNS rebinding)
    allow_ip_hosts: bool = False  # also any IP literal (set when bound to 0.0.0.0 or ::)
    docs: bool = True  # serve /docs, /redoc and /openapi.json
    expose_versions: bool = False  # library versions and the git commit in /api/model

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, rule: str) -> None:
            if not ok:
                raise ConfigError(f"--{name.replace('_', '-')}: must be {rule}, got "
                                  f"{getattr(self, name)!r}")

        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool)):
                check(f.name, math.isfinite(v), "a finite number")
        check("max_upload_bytes", self.max_upload_bytes >= 1, ">= 1 byte")
        check("max_pixels", self.max_pixels >= 1, ">= 1")
        check("body_timeout", 0 < self.body_timeout <= 3600, "in (0, 3600] seconds")
        check("max_concurrent", 1 <= self.max_concurrent <= 100_000, "in 1..100000")
        check("max_connections", 1 <= self.max_connections <= 100_000, "in 1..100000")
        check("workers", self.workers is None or 1 <= self.workers <= 256, "in 1..256")
        check("worker_kind", self.worker_kind in WORKER_KINDS, f"one of {', '.join(WORKER_KINDS)}")
        check("torch_threads", self.torch_threads is None or 1 <= self.torch_threads <= 256,
              "in 1..256")
        check("max_batch", 1 <= self.max_batch <= 128, "in 1..128")
        check("batch_window_ms", 0 <= self.batch_window_ms <= 1000, "in 0..1000 ms")
        if isinstance(self.allowed_hosts, str):
            raise ConfigError("--allowed-host: expected a list of host names, got one string")
        for h in self.allowed_hosts:
            if not isinstance(h, str) or not h or any(c in h for c in "/ \t@?#\\"):
                raise ConfigError(f"--allowed-host: {h!r} is not a host name (e.g. "
                                  "example.org, *.example.org, 192.168.1.20)")

    @property
    def preprocess_workers(self) -> int:
        return self.workers or min(4, os.cpu_count() or 1)


def hosts_for(bind: str, extra: tuple[str, ...] = ()) -> tuple[tuple[str, ...], bool]:
    """(allowed Host names, whether IP literals are allowed) for a server bound to ``bind``:
    localhost, the bound address and ``extra``. Bound to every interface (0.0.0.0, ::), any
    IP literal is accepted as well: DNS rebinding needs a name, so an address in the Host
    header is safe, and the machine's addresses are not known in advance."""
    names = [*LOCAL_HOSTS, *([bind] if bind not in WILDCARD_ADDRESSES else []), *extra]
    return tuple(dict.fromkeys(normalize_host(n) for n in names)), bind in WILDCARD_ADDRESSES


def normalize_host(host: str) -> str:
    """A Host header value or a name -> lower case, no port, no brackets, no final dot."""
    h = host.strip().lower()
    if h.startswith("["):  # [v6]:port
        return h[1 : h.find("]")] if "]" in h else h
    if h.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        h = h.split(":")[0]
    return h.rstrip(".")


def host_allowed(header: str, allowed: tuple[str, ...], allow_ip: bool) -> bool:
    h = normalize_host(header)
    if not h:
        return False
    for a in allowed:
        if a == "*" or a == h or (a.startswith("*.") and h.endswith(a[1:])):
            return True
    if allow_ip:
        try:
            ipaddress.ip_address(h)
            return True
        except ValueError:
            return False
    return False
