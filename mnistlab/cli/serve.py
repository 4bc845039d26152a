"""`mnistlab serve`: the drawing page and the JSON prediction API."""

from __future__ import annotations

import argparse
import logging
import math
import sys

from ..limits import DEFAULT_THRESHOLD
from ..limits import SERVE_MAX_PIXELS as MAX_PIXELS
from ..limits import SERVE_MAX_UPLOAD_BYTES as MAX_UPLOAD_BYTES
from ..serve.options import WORKER_KINDS, ServeOptions, hosts_for
from .common import command

_D = ServeOptions()


def register(sub) -> None:
    p = command(sub, "serve", "web page to draw digits, and a JSON prediction API",
                description="Serve a trained model: a page to draw or upload digits at /, and "
                "POST /api/predict, GET /api/model, GET /api/health (docs at /docs).")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="a run directory (uses its best checkpoint) or a checkpoint path")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000, help="port")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="flag predictions below this probability as unsure")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--runtime", default="torch", metavar="torch|onnx",
                   help="torch, or onnx: the run's ONNX export (mnistlab export RUN) or a .onnx "
                        "file, run by ONNX Runtime (the onnx extra)")
    p.add_argument("--no-access-log", dest="access_log", action="store_false",
                   help="do not log each request (logged by default)")
    g = p.add_argument_group("limits")
    g.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_BYTES / 2**20,
                   help="largest accepted image file in MB")
    g.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help="largest accepted image in pixels, checked before decoding")
    g.add_argument("--body-timeout", type=float, default=_D.body_timeout, metavar="S",
                   help="seconds to receive a request body; slower ones get 408")
    g.add_argument("--max-concurrent", type=int, default=_D.max_concurrent, metavar="N",
                   help="requests in progress at once; more get 503 with Retry-After")
    g.add_argument("--max-connections", type=int, default=_D.max_connections, metavar="N",
                   help="open connections (and connections waiting to be accepted)")
    g = p.add_argument_group("work")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="preprocessing workers (default: CPU count, at most 4)")
    g.add_argument("--threads", dest="workers", type=int, help=argparse.SUPPRESS)  # old name
    g.add_argument("--worker-kind", choices=WORKER_KINDS, default=_D.worker_kind,
                   help="process: preprocess in worker processes, in parallel on every core "
                   "(default); thread: in threads of the server process, which share one "
                   "interpreter lock (less memory, no start-up)")
    g.add_argument("--max-batch", type=int, default=_D.max_batch, metavar="N",
                   help="images classified together in one forward pass, at most")
    g.add_argument("--batch-window-ms", type=float, default=_D.batch_window_ms, metavar="MS",
                   help="how long a lone request waits for others to share its forward pass")
    g = p.add_argument_group("exposure")
    g.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests for this Host (repeatable; *.example.org "
                   "matches subdomains; '*' any). Default: localhost and the --host address; "
                   "others get 400 (against DNS rebinding)")
    g.add_argument("--no-docs", dest="docs", action="store_false",
                   help="do not serve /docs, /redoc and /openapi.json (served by default)")
    g.add_argument("--expose-versions", action="store_true",
                   help="show library versions and the git commit in /api/model")
    p.set_defaults(func=run)


def options_from(args: argparse.Namespace) -> ServeOptions:
    """The server's settings from the flags; ConfigError (one line) for a bad value."""
    from ..errors import ConfigError

    mb = args.max_upload_mb
    if not (math.isfinite(mb) and 0 < mb <= 1024):
        raise ConfigError(f"--max-upload-mb: must be > 0 and at most 1024, got {mb:g}")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: must be in 1..65535, got {args.port}")
    allowed, allow_ip = hosts_for(args.host, tuple(args.allowed_host))
    return ServeOptions(
        max_upload_bytes=int(mb * 2**20), max_pixels=args.max_pixels,
        body_timeout=args.body_timeout, max_concurrent=args.max_concurrent,
        max_connections=args.max_connections, workers=args.workers,
        worker_kind=args.worker_kind,
        max_batch=args.max_batch, batch_window_ms=args.batch_window_ms,
        allowed_hosts=allowed, allow_ip_hosts=allow_ip, docs=args.docs,
        expose_versions=args.expose_versions)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    opts = options_from(args)
    try:
        import uvicorn

        from ..serve.app import create_app, server_config
    except ImportError as e:
        raise ConfigError(f"serve: serving needs the 'serve' extra ({e.name} is missing): "
                          "pip install 'mnistlab[serve]'") from None
    try:
        app = create_app(args.checkpoint, threshold=args.threshold, options=opts,
                         runtime=args.runtime)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from None
    handler = logging.StreamHandler()  # the server's own lines, in uvicorn's format
    handler.setFormatter(logging.Formatter("%(levelname)-9s %(message)s"))
    logger = logging.getLogger("mnistlab.serve")
    logger.addHandler(handler)
    logger.setLevel(args.log_level.upper())
    docs = "  (API docs at /docs)" if opts.docs else ""
    print(f"serving {app.state.predictor.meta['model']} from {args.checkpoint} "
          f"at http://{args.host}:{args.port}/{docs}", file=sys.stderr)
    uvicorn.Server(server_config(app, host=args.host, port=args.port,
                                 log_level=args.log_level, access_log=args.access_log)).run()
    return 0
