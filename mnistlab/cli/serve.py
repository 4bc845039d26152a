"""`mnistlab serve`: the drawing page and the JSON prediction API."""

from __future__ import annotations

import argparse
import sys

from ..limits import DEFAULT_THRESHOLD
from ..limits import SERVE_MAX_PIXELS as MAX_PIXELS
from ..limits import SERVE_MAX_UPLOAD_BYTES as MAX_UPLOAD_BYTES
from .common import command


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
    p.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_BYTES / 2**20,
                   help="largest accepted image file in MB")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help="largest accepted image in pixels, checked before decoding")
    p.add_argument("--threads", type=int, default=None,
                   help="concurrent inference threads (default: CPU count, at most 4)")
    p.add_argument("--workers", dest="threads", type=int, help=argparse.SUPPRESS)  # old name
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb: must be > 0, got {args.max_upload_mb:g}")
    if args.max_pixels < 1:
        raise ConfigError(f"--max-pixels: must be >= 1, got {args.max_pixels}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads: must be >= 1, got {args.threads}")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: must be in 1..65535, got {args.port}")
    try:
        import uvicorn

        from ..serve.app import create_app
    except ImportError as e:
        raise ConfigError(f"serve: serving needs the 'serve' extra ({e.name} is missing): "
                          "pip install 'mnistlab[serve]'") from None
    try:
        app = create_app(args.checkpoint, threshold=args.threshold,
                         max_upload_bytes=int(args.max_upload_mb * 2**20),
                         max_pixels=args.max_pixels, workers=args.threads)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from None
    print(f"serving {app.state.predictor.meta['model']} from {args.checkpoint} "
          f"at http://{args.host}:{args.port}/  (API docs at /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
