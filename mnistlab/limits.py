"""Defaults and limits of the user-facing paths (`predict`, the server), in one leaf module,
so the CLI can show them in ``--help`` without importing NumPy or PIL."""

DEFAULT_THRESHOLD = 0.5  # below this top probability a prediction is flagged "unsure"
DEFAULT_TOP_K = 3  # alternatives shown with each prediction
MAX_PIXELS = 25_000_000  # decompression-bomb guard: width * height, checked before decoding
MAX_FILE_BYTES = 64 * 1024 * 1024  # an image file read from disk (a 24-Mpixel JPEG is ~10 MB)
SERVE_MAX_UPLOAD_BYTES = 5 * 1024 * 1024  # an image file; a phone photo as JPEG is 2-5 MB
SERVE_MAX_PIXELS = 16_000_000  # e.g. 4000 x 4000; decoded RGBA is 64 MB per request
