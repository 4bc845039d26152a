"""The web app (``app.py``): a drawing page and a JSON API, run with uvicorn by
``mnistlab serve`` (cli/serve.py).

FastAPI and uvicorn are the optional ``serve`` extra, so only ``app.py`` imports them;
this package's limits below are safe to import without them.
"""

from ..limits import SERVE_MAX_PIXELS as MAX_PIXELS
from ..limits import SERVE_MAX_UPLOAD_BYTES as MAX_UPLOAD_BYTES

__all__ = ["MAX_PIXELS", "MAX_UPLOAD_BYTES"]
