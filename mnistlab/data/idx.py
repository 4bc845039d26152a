"""The IDX format (LeCun's MNIST files): parse, encode, read and write, gzip or raw.

An IDX file is a magic number ``0x0000TTNN`` (TT a type code, NN the number of dimensions),
NN big-endian uint32 sizes, then the values, big-endian. gzip is decompressed incrementally
and never past what the IDX header inside promises (a gzip bomb is stopped early, whatever it
would expand to). Problems raise :class:`DataError` naming the file and what was found.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import DataError  # a leaf: every user-fixable error of mnistlab

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("=").str: k for k, v in _IDX_DTYPES.items()}
_IDX_CODES.update({np.dtype(v).str: k for k, v in _IDX_DTYPES.items()})
_IDX_TYPE_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32",
                   0x0E: "float64"}  # fmt: skip
MAX_IDX_DIMS = 4
MAX_IDX_BYTES = 1 << 31  # 2 GiB: far above any 28x28 dataset (EMNIST is 0.6 GB); a bomb guard
GZIP_MAGIC = b"\x1f\x8b"
_TRAILING_SLACK = 1 << 16  # decompress this far past the header's size, to name trailing bytes
_PIECE = 1 << 20  # at most this much decompressed output is held per step


# ------------------------------------------------------------------------------ gzip


class Gunzip:
    """Incremental gzip decompression that refuses to produce more than ``limit`` bytes.

    ``feed(chunk)`` yields decompressed pieces of at most ``piece`` bytes (1 MiB), so a caller
    that hashes and drops them holds O(piece) whatever the input expands to. Concatenated gzip
    members are accepted, as ``gzip.decompress`` accepts them. ``finish()`` checks that the
    data was complete.
    """

    def __init__(self, source: str, limit: int, piece: int = _PIECE):
        self.source, self.limit, self.piece, self.total = source, limit, piece, 0
        self._d = zlib.decompressobj(wbits=31)  # 31: a gzip header and CRC/size trailer

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        while chunk:
            if self._d.eof:  # another gzip member follows
                self._d = zlib.decompressobj(wbits=31)
            try:
                piece = self._d.decompress(chunk, min(self.piece, self.limit + 1 - self.total))
            except zlib.error as e:
                raise self._corrupted(e) from None
            self.total += len(piece)
            if self.total > self.limit:
                raise DataError(
                    f"{self.source}: decompresses to more than the expected {self.limit:,} "
                    "bytes; stopped there (a damaged file, not this file, or a gzip bomb)"
                )
            if piece:
                yield piece
            chunk = self._d.unused_data if self._d.eof else self._d.unconsumed_tail

    def finish(self) -> None:
        if not self._d.eof:
            raise self._corrupted("the data ends before the gzip trailer")

    def _corrupted(self, why: object) -> DataError:
        return DataError(
            f"{self.source}: corrupted or truncated gzip data ({why}); expected a complete gzip "
            "file. Delete it and download or copy it again."
        )


def decompress(raw: bytes, source: str, limit: int | None = None) -> bytes:
    """The content of raw or gzip IDX bytes. gzip is decompressed to at most ``limit`` bytes,
    by default to what the IDX header inside promises (plus a little, so that trailing bytes
    get an exact message); a header that does not parse raises before anything is inflated."""
    if raw[:2] != GZIP_MAGIC:
        return raw
    if limit is None:  # the header is in the first 4 + 4 * 4 bytes of the content
        head = b""
        for piece in Gunzip(source, MAX_IDX_BYTES).feed(raw):
            head += piece
            if len(head) >= 64:
                break
        # under 64 bytes: the whole (tiny or truncated) content; parse_idx says what is wrong
        limit = 64 if len(head) < 64 else min(idx_size(head, source) + _TRAILING_SLACK,
                                               MAX_IDX_BYTES)
    unzip = Gunzip(source, limit, piece=limit + 1)  # in one piece: no copy to join them
    content = b"".join(unzip.feed(raw))
    unzip.finish()
    return content


# ------------------------------------------------------------------------------ parsing


def _describe_bad_start(data: bytes) -> str:
    if data[:2] == GZIP_MAGIC:
        return " (it is gzip data inside gzip: compressed twice?)"
    head = bytes(data[:64]).lstrip().lower()
    if head.startswith(b"<"):
        return " (it looks like an HTML/XML page, e.g. a server's error page, not IDX data)"
    if head[:1].isdigit() and b"," in head:
        return " (it looks like CSV text, not IDX data)"
    return ""


def parse_header(data: bytes, source: str = "<bytes>") -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, dims, header length) from the first bytes of IDX data (the first 20 suffice);
    raises DataError for a bad magic number or a truncated header."""
    if len(data) < 4:
        raise DataError(
            f"{source}: file is {len(data)} bytes, expected at least 4 for an IDX magic number"
        )
    code, ndim = data[2], data[3]
    if data[:2] != b"\0\0":
        raise DataError(
            f"{source}: not an IDX file: expected a magic number 0x0000TTNN (TT a type code "
            f"such as 08 for uint8, NN the number of dimensions), found 0x{bytes(data[:4]).hex()}"
            + _describe_bad_start(data)
        )
    if code not in _IDX_DTYPES:
        raise DataError(
            f"{source}: bad IDX magic number 0x{bytes(data[:4]).hex()}: expected a type code in "
            + ", ".join(f"0x{c:02x} ({n})" for c, n in _IDX_TYPE_NAMES.items())
            + f"; found 0x{code:02x}"
        )
    if not 1 <= ndim <= MAX_IDX_DIMS:
        raise DataError(
            f"{source}: bad IDX magic number 0x{bytes(data[:4]).hex()}: expected "
            f"1..{MAX_IDX_DIMS} dimensions, found {ndim}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{source}: truncated IDX header: {ndim} dimensions need {header} header bytes, "
            f"found {len(data)}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.dtype(_IDX_DTYPES[code]), dims, header


def describe_idx(dtype: np.dtype, dims: tuple[int, ...]) -> str:
    """E.g. "60000 x 28 x 28 uint8"."""
    code = _IDX_CODES[dtype.str]
    return f"{' x '.join(map(str, dims))} {_IDX_TYPE_NAMES[code]}"


def idx_size(data: bytes, source: str = "<bytes>") -> int:
    """The total size in bytes (header included) that an IDX header promises."""
    dtype, dims, header = parse_header(data, source)
    size = header + math.prod(dims) * dtype.itemsize
    if size > MAX_IDX_BYTES:
        raise DataError(
            f"{source}: IDX header says {describe_idx(dtype, dims)}, {size:,} bytes: more than "
            f"the {MAX_IDX_BYTES:,} accepted (a damaged header?)"
        )
    return size


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes: magic (0, 0, type code, ndim), ndim big-endian uint32 dims, data.

    Returns a native-byte-order array; raises DataError for any malformed input.
    """
    dtype, dims, header = parse_header(data, source)
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else f"{len(data) - expected} trailing bytes"
        raise DataError(
            f"{source}: IDX header says {describe_idx(dtype, dims)}, so expected "
            f"{expected} bytes, found {len(data)} ({what})"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writeable native copy


def read_bytes(path: str | os.PathLike) -> bytes:
    """The raw bytes of a file, or DataError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a raw or gzip IDX file."""
    return parse_idx(decompress(read_bytes(path), str(path)), str(path))


# ------------------------------------------------------------------------------ writing


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array`` (uint8, int8, int16, int32, float32 or float64)."""
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("=").str)
    if code is None:
        raise DataError(
            f"write_idx: expected an array of uint8, int8, int16, int32, float32 or float64, "
            f"found {array.dtype}"
        )
    if not 1 <= array.ndim <= MAX_IDX_DIMS:
        raise DataError(f"write_idx: expected 1..{MAX_IDX_DIMS} dimensions, found {array.ndim}")
    big = np.ascontiguousarray(array, dtype=np.dtype(_IDX_DTYPES[code]))
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + big.tobytes()


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write ``array`` as IDX (atomically); gzip if ``compress`` or the name ends in .gz."""
    path = Path(path)
    payload = idx_bytes(array)
    if compress or (compress is None and path.suffix == ".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)
    _atomic_write(path, payload)
