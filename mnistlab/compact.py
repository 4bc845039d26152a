"""The compact weight format (``.mnc``) for pruned and quantized models.

A file is a small self-describing header followed by one xz-compressed payload:

    b"MNLCMPCT" | header length (uint32, little-endian) | header (UTF-8 JSON) | xz(payload)
    | SHA-256 of everything before it (32 bytes)

The header lists every tensor (name, shape, dtype, encoding, byte ranges in the payload)
and the SHA-256 of the uncompressed payload; the trailing hash covers the header too. Each tensor is stored one of three ways:

    dense    the raw little-endian values
    masked   a bit mask of the non-zero entries (1 bit per entry, ``np.packbits``) followed by
             the non-zero values only: chosen when it is smaller than ``dense``, i.e. for
             pruned weights
    qint     a symmetric integer tensor (``QTensor``): int8 codes (only the non-zero ones
             after a bit mask when that is smaller) and one float32 scale per output channel;
             the value is ``code * scale``, so a pruned zero stays exactly zero

Deep Compression (Han et al., 2016) stores pruned weights as relative indices plus Huffman
codes; a bit mask compressed by xz costs about the entropy of the mask (0.29 bit per weight
at 95% sparsity) and needs no custom coder. Nothing here is pickled: decoding reads JSON and
NumPy buffers, checks every length, the dtype against a short list, the mask against the
value count and the payload against its hash, so a damaged or tampered file is refused with
``CompactError``. This module imports nothing from mnistlab (checkpoint.py builds on it).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"MNLCMPCT"
FORMAT = "mnistlab-compact"
VERSION = 1
SUFFIX = ".mnc"
DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
MAX_ELEMENTS = 1 << 31  # per tensor; far above any model here, far below a memory bomb
MAX_HEADER = 1 << 24


class CompactError(ValueError):
    """A compact weight file is damaged, tampered with or not one at all."""


@dataclass(frozen=True)
class QTensor:
    """A symmetric integer tensor: ``value = code * scale[channel]`` along dimension 0."""

    codes: np.ndarray  # int8, the tensor's shape; |code| <= 2**(bits-1) - 1
    scale: np.ndarray  # float32 (shape[0],), > 0
    bits: int = 8

    def dequantize(self) -> np.ndarray:
        """float32 values. The one formula every consumer uses, so they agree bit for bit."""
        shape = (-1,) + (1,) * (self.codes.ndim - 1)
        return self.codes.astype(np.float32) * self.scale.reshape(shape)


def quantize_per_channel(w: np.ndarray, bits: int = 8) -> QTensor:
    """Round ``w`` to ``2**bits - 1`` symmetric levels per output channel (dim 0): scale =
    max|w_c| / (2**(bits-1) - 1), the scheme of ONNX Runtime's per-channel int8 weights.
    Zeros stay zero; an all-zero channel gets scale 1."""
    if not 2 <= bits <= 8:
        raise CompactError(f"bits must be in 2..8, got {bits}")
    w = np.asarray(w, dtype=np.float32)
    qmax = 2 ** (bits - 1) - 1
    peak = np.abs(w.reshape(len(w), -1)).max(axis=1)
    scale = np.where(peak > 0, peak / qmax, 1.0).astype(np.float32)
    codes = np.clip(np.rint(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), -qmax, qmax)
    return QTensor(codes.astype(np.int8), scale, bits)


# ------------------------------------------------------------------------------ encode


def _nonzero(a: np.ndarray) -> np.ndarray:
    """Entries whose bit pattern is not all zeros (so -0.0 counts as a value and survives)."""
    if a.dtype == np.bool_:
        return a.reshape(-1)
    return a.reshape(-1).view(f"u{a.dtype.itemsize}") != 0


def _masked_smaller(n: int, nnz: int, itemsize: int) -> bool:
    return (n + 7) // 8 + nnz * itemsize < n * itemsize


def encode(tensors: dict[str, np.ndarray | QTensor], *, preset: int = 9) -> bytes:
    """Tensors (NumPy arrays or ``QTensor``) -> the bytes of a ``.mnc`` file."""
    parts: list[bytes] = []
    offset = 0
    entries = []

    def add(data: bytes) -> list[int]:
        nonlocal offset
        parts.append(data)
        span = [offset, len(data)]
        offset += len(data)
        return span

    for name, t in tensors.items():
        if isinstance(t, QTensor):
            codes = np.asarray(t.codes, dtype=np.int8, order="C")
            scale = np.ascontiguousarray(t.scale, dtype="<f4")
            if codes.ndim < 1 or scale.shape != (codes.shape[0],):
                raise CompactError(f"{name}: need one scale per output channel, got "
                                   f"{scale.shape} for codes {codes.shape}")
            entry = {"name": name, "shape": list(codes.shape), "dtype": "float32",
                     "encoding": "qint", "bits": int(t.bits)}
            flat, values = codes.reshape(-1), codes
            itemsize = 1
        else:
            a = np.asarray(t, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
            if a.dtype.name not in DTYPES:
                raise CompactError(f"{name}: dtype {a.dtype} is not storable ({', '.join(DTYPES)})")
            entry = {"name": name, "shape": list(a.shape), "dtype": a.dtype.name}
            flat, values = a.reshape(-1), a
            itemsize = a.dtype.itemsize
        nz = _nonzero(flat)
        nnz = int(nz.sum())
        masked = _masked_smaller(flat.size, nnz, itemsize)
        if not isinstance(t, QTensor):
            entry["encoding"] = "masked" if masked else "dense"
        entry["nnz"] = nnz
        entry["masked"] = masked
        le = values.dtype.newbyteorder("<") if values.dtype.itemsize > 1 else values.dtype
        if masked:
            entry["mask"] = add(np.packbits(nz, bitorder="little").tobytes())
            entry["values"] = add(flat[nz].astype(le).tobytes())
        else:
            entry["values"] = add(flat.astype(le).tobytes())
        if isinstance(t, QTensor):
            entry["scale"] = add(scale.tobytes())
        entries.append(entry)
    raw = b"".join(parts)
    header = json.dumps({"format": FORMAT, "version": VERSION, "compression": "xz",
                         "payload_bytes": len(raw),
                         "payload_sha256": hashlib.sha256(raw).hexdigest(),
                         "tensors": entries}, separators=(",", ":")).encode()
    body = MAGIC + struct.pack("<I", len(header)) + header + lzma.compress(raw, preset=preset)
    return body + hashlib.sha256(body).digest()


# ------------------------------------------------------------------------------ decode


def read_header(blob: bytes) -> dict:
    """The JSON header of a ``.mnc`` file (validated), without decompressing the payload."""
    if blob[: len(MAGIC)] != MAGIC or len(blob) < len(MAGIC) + 4 + 32:
        raise CompactError("not a mnistlab compact weight file (bad magic bytes)")
    if hashlib.sha256(blob[:-32]).digest() != blob[-32:]:
        raise CompactError("damaged compact weight file: checksum mismatch (the file was "
                           "changed or truncated)")
    (n,) = struct.unpack("<I", blob[len(MAGIC) : len(MAGIC) + 4])
    if n > MAX_HEADER or len(MAGIC) + 4 + n > len(blob) - 32:
        raise CompactError("damaged compact weight file: header length out of range")
    try:
        header = json.loads(blob[len(MAGIC) + 4 : len(MAGIC) + 4 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CompactError(f"damaged compact weight file: unreadable header ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CompactError("not a mnistlab compact weight file (header format)")
    if header.get("version") != VERSION:
        raise CompactError(f"compact format version {header.get('version')} is not the one "
                           f"this mnistlab reads ({VERSION}); upgrade mnistlab")
    if not isinstance(header.get("tensors"), list) or not isinstance(
            header.get("payload_bytes"), int):
        raise CompactError("damaged compact weight file: header lacks tensors/payload_bytes")
    return header


def _span(raw: bytes, entry: dict, key: str, expect: int) -> bytes:
    span = entry.get(key)
    if (not isinstance(span, list) or len(span) != 2 or not all(isinstance(v, int) for v in span)
            or span[0] < 0 or span[1] != expect or span[0] + span[1] > len(raw)):
        raise CompactError(f"damaged compact weight file: {entry.get('name')!r} {key} "
                           f"does not fit (expected {expect} bytes)")
    return raw[span[0] : span[0] + span[1]]


def _decode_entry(raw: bytes, e: dict) -> np.ndarray | QTensor:
    name, shape = e.get("name"), e.get("shape")
    if not isinstance(name, str) or not isinstance(shape, list) or not all(
            isinstance(s, int) and s >= 0 for s in shape):
        raise CompactError(f"damaged compact weight file: bad tensor entry {name!r}")
    n = int(np.prod(shape, dtype=np.int64))
    enc, nnz, masked = e.get("encoding"), e.get("nnz"), e.get("masked")
    if n > MAX_ELEMENTS or not isinstance(nnz, int) or not 0 <= nnz <= n or not isinstance(
            masked, bool):
        raise CompactError(f"damaged compact weight file: bad sizes for {name!r}")
    if enc == "qint":
        dtype, bits = np.dtype(np.int8), e.get("bits")
        if not isinstance(bits, int) or not 2 <= bits <= 8 or not shape:
            raise CompactError(f"damaged compact weight file: bad bits/shape for {name!r}")
    elif enc in ("dense", "masked") and e.get("dtype") in DTYPES:
        dtype = np.dtype(e["dtype"])
    else:
        raise CompactError(f"damaged compact weight file: unknown encoding or dtype for {name!r}")
    le = dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype
    if masked:
        mask = np.unpackbits(np.frombuffer(_span(raw, e, "mask", (n + 7) // 8), np.uint8),
                             count=n, bitorder="little").astype(bool)
        if int(mask.sum()) != nnz:
            raise CompactError(f"damaged compact weight file: {name!r} mask does not match "
                               "its value count")
        flat = np.zeros(n, dtype)
        flat[mask] = np.frombuffer(_span(raw, e, "values", nnz * dtype.itemsize), le)
    else:
        flat = np.frombuffer(_span(raw, e, "values", n * dtype.itemsize), le).astype(dtype)
        if int(_nonzero(flat).sum()) != nnz:
            raise CompactError(f"damaged compact weight file: {name!r} value count differs")
    values = flat.reshape(shape)
    if enc != "qint":
        return values
    qmax = 2 ** (e["bits"] - 1) - 1
    scale = np.frombuffer(_span(raw, e, "scale", shape[0] * 4), "<f4").astype(np.float32)
    if np.abs(values.astype(np.int16)).max(initial=0) > qmax or not np.all(scale > 0):
        raise CompactError(f"damaged compact weight file: {name!r} codes or scales out of range")
    return QTensor(values, scale, e["bits"])


def decode(blob: bytes) -> dict[str, np.ndarray | QTensor]:
    """The bytes of a ``.mnc`` file -> {name: array or QTensor}, checked throughout."""
    header = read_header(blob)
    start = len(MAGIC) + 4 + struct.unpack("<I", blob[len(MAGIC) : len(MAGIC) + 4])[0]
    want = header["payload_bytes"]
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:  # never inflate past the declared size (a small file cannot claim gigabytes of RAM)
        raw = dec.decompress(blob[start:-32], max_length=want)
    except lzma.LZMAError as e:
        raise CompactError(f"damaged compact weight file: payload does not decompress ({e})") from None
    if len(raw) != want or not dec.eof or dec.unused_data:
        raise CompactError("damaged compact weight file: payload length differs from its header")
    if hashlib.sha256(raw).hexdigest() != header.get("payload_sha256"):
        raise CompactError("damaged compact weight file: payload checksum mismatch")
    out: dict[str, np.ndarray | QTensor] = {}
    for e in header["tensors"]:
        if not isinstance(e, dict):
            raise CompactError("damaged compact weight file: bad tensor entry")
        t = _decode_entry(raw, e)
        if e["name"] in out:
            raise CompactError(f"damaged compact weight file: {e['name']!r} appears twice")
        out[e["name"]] = t
    return out


def dense(tensors: dict[str, np.ndarray | QTensor]) -> dict[str, np.ndarray]:
    """Every ``QTensor`` dequantized: the plain state dict a float model loads."""
    return {k: v.dequantize() if isinstance(v, QTensor) else v for k, v in tensors.items()}
