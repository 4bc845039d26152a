"""``mnistlab serve``: the drawing page and JSON API (``app.py``), run with uvicorn.

FastAPI and uvicorn are the optional ``serve`` extra, so they are imported only when the
server actually starts; ``add_serve_parser`` is safe to import without them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# Server limits (the CLI flags' defaults and create_app's).
MAX_UPLOAD_BYTES = 5 * 1024 * 1024  # an image file; a phone photo as JPEG is 2-5 MB
MAX_PIXELS = 16_000_000  # e.g. 4000 x 4000; decoded RGBA is 64 MB, so keep workers bounded


def run_serve(args: argparse.Namespace) -> int:
    """Start the server; returns when it stops (exit 0), or 2 if it cannot start."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        print(f"error: serving needs the 'serve' extra ({e.name} is missing): "
              "pip install 'mnistlab[serve]'", file=sys.stderr)
        return 2
    from ..checkpoint import CheckpointError

    try:
        app = create_app(args.checkpoint, threshold=args.threshold,
                         max_upload_bytes=int(args.max_upload_mb * 2**20),
                         max_pixels=args.max_pixels, workers=args.workers,
                         runtime=args.runtime)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"serving {app.state.predictor.meta['model']} from {args.checkpoint} "
          f"at http://{args.host}:{args.port}/  (API docs at /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` on an ``argparse`` subparsers object; sets ``func=run_serve``."""
    from ..predict import DEFAULT_THRESHOLD

    p = subparsers.add_parser(
        "serve", help="web page to draw digits, and a JSON prediction API",
        description="Serve a trained model: a page to draw or upload digits at /, and "
                    "POST /api/predict, GET /api/model, GET /api/health (docs at /docs).")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="a run directory (uses its best checkpoint) or a checkpoint path")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"flag predictions below this probability as unsure "
                        f"(default {DEFAULT_THRESHOLD})")
    p.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_BYTES / 2**20,
                   help=f"largest accepted image file in MB (default {MAX_UPLOAD_BYTES / 2**20:g})")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"largest accepted image in pixels, checked before decoding "
                        f"(default {MAX_PIXELS:,})")
    p.add_argument("--workers", type=int, default=None,
                   help="concurrent inference threads (default: CPU count, at most 4)")
    p.add_argument("--runtime", default="torch", metavar="torch|onnx",
                   help="torch (default), or onnx: the run's ONNX export (mnistlab export RUN) "
                        "or a .onnx file, run by ONNX Runtime")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run_serve)
    return p
