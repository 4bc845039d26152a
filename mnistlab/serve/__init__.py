"""The web app (``app.py``): a drawing page and a JSON API, run with uvicorn by
``mnistlab serve`` (cli/serve.py).

    options.py   ServeOptions: limits, batching and exposure settings, checked (a leaf)
    bodies.py    request body -> image bytes (multipart, JSON base64, raw)
    guards.py    Host check and the bound on requests in progress (ASGI middleware)
    batching.py  the micro-batcher: concurrent requests share one forward pass
    app.py       the FastAPI app and uvicorn's settings

FastAPI and uvicorn are the optional ``serve`` extra, so only ``app.py``, ``bodies.py`` and
``guards.py`` need them; this package and ``options.py`` are safe to import without them.
"""

from ..limits import SERVE_MAX_PIXELS as MAX_PIXELS
from ..limits import SERVE_MAX_UPLOAD_BYTES as MAX_UPLOAD_BYTES
from .options import ServeOptions

__all__ = ["MAX_PIXELS", "MAX_UPLOAD_BYTES", "ServeOptions"]
