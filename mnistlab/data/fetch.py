"""Finding, verifying and downloading dataset files.

Where files are looked for, in order: the ``data_dir`` argument (``--data-dir``), the
``MNISTLAB_DATA_DIR`` environment variable, the per-user cache (``$XDG_CACHE_HOME/mnistlab``
or ``~/.cache/mnistlab``), then read-only system folders (``/usr/share/datasets/<name>``,
where Debian's ``dataset-fashion-mnist`` puts Fashion-MNIST). Inside a directory, files may
sit in ``<dir>/<name>/`` or directly in ``<dir>/``, gzip-compressed or raw. Downloads go to
``<first of flag, env, cache>/<name>/``.

Every file is checked before use, in this order: IDX magic number and header, size against
the header's dimensions, shape (N, 28, 28) or (N,), uint8, label range, image count against
label count, count against the registry, and the SHA-256 of the decompressed content.

Downloads are bounded and checked as they stream, so nothing unverified is ever renamed into
place, over ``http://`` mirrors too: the body may not exceed the file's known compressed size
(+25%), the content is inflated incrementally and never past its exact expected size (a gzip
bomb costs at most 1 MiB of memory), and every byte is hashed on the way; the ``.part`` file
becomes the real file only when the SHA-256 matches. ``.part`` files of dead processes (or
older than a day) are removed on the next download.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .idx import GZIP_MAGIC, DataError, Gunzip, decompress, describe_idx, parse_header, parse_idx
from .idx import read_bytes as _read_bytes

ENV_VAR = "MNISTLAB_DATA_DIR"
SYSTEM_DIRS = (Path("/usr/share/datasets"),)
IMAGE_SIZE = 28
USER_AGENT = "mnistlab (+https://pypi.org/project/mnistlab)"


@dataclass(frozen=True)
class FileSpec:
    """What one IDX file of a dataset must be."""

    name: str  # file name without .gz, e.g. "train-images-idx3-ubyte"
    sha256: str  # of the decompressed content
    count: int  # number of images or labels
    size: int | None = None  # bytes of the .gz on the mirrors (bounds a download), if known


def expected_header(spec: FileSpec, kind: str) -> bytes:
    """The exact IDX header of ``spec``'s file: uint8, (count, 28, 28) or (count,)."""
    dims = (spec.count, IMAGE_SIZE, IMAGE_SIZE) if kind == "images" else (spec.count,)
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


def content_size(spec: FileSpec, kind: str) -> int:
    """Bytes of the decompressed file: header + one byte per pixel or label."""
    per_item = IMAGE_SIZE * IMAGE_SIZE if kind == "images" else 1
    return len(expected_header(spec, kind)) + spec.count * per_item


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


def check_structure(array: np.ndarray, source: str, kind: str, num_classes: int | None) -> None:
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


def check_pair(images: np.ndarray, labels: np.ndarray, img_src: str, lbl_src: str) -> None:
    if len(images) != len(labels):
        raise DataError(
            f"{img_src} has {len(images)} images but its labels file {lbl_src} has "
            f"{len(labels)} labels; expected the same count in both (mismatched or truncated "
            "pair of files)"
        )


def _checksum_error(
    digest: str, source: str, spec: FileSpec, known: Mapping[str, str] | None
) -> DataError:
    other = (known or {}).get(digest)
    why = (
        f"It is the file of {other}, not this dataset's."
        if other
        else "The file is corrupted or not the expected dataset; delete it and download "
        "or copy it again."
    )
    return DataError(
        f"{source}: content checksum mismatch: expected sha256 {spec.sha256}, "
        f"found {digest}. {why}"
    )


def check_spec(
    array: np.ndarray,
    digest: str,
    source: str,
    spec: FileSpec,
    kind: str,
    known: Mapping[str, str] | None = None,
) -> None:
    """Count and content checksum against the registry; ``known`` maps other datasets'
    digests to a description, to say whose file it is when it is the wrong one."""
    if len(array) != spec.count:
        raise DataError(f"{source}: expected {spec.count} {kind}, found {len(array)}")
    if digest != spec.sha256:
        raise _checksum_error(digest, source, spec, known)


@functools.lru_cache(maxsize=16)
def _read_checked(
    path: Path, stamp: tuple[int, int], kind: str, num_classes: int | None
) -> tuple[np.ndarray, str]:
    content = decompress(_read_bytes(path), str(path))
    digest = hashlib.sha256(content).hexdigest()
    array = parse_idx(content, str(path))
    check_structure(array, str(path), kind, num_classes)
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
    content: bytes,
    source: str,
    spec: FileSpec,
    kind: str,
    num_classes: int | None = None,
    known: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Fully verify the (raw or gzip) bytes of one file; returns the parsed array."""
    content = decompress(content, source, content_size(spec, kind))
    array = parse_idx(content, source)
    check_structure(array, source, kind, num_classes)
    check_spec(array, hashlib.sha256(content).hexdigest(), source, spec, kind, known)
    return array


def verify_file(
    path: str | os.PathLike,
    spec: FileSpec,
    kind: str,
    num_classes: int | None = None,
    known: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Parse and fully verify one file; returns a read-only array (cached)."""
    array, digest = read_checked(path, kind, num_classes)
    check_spec(array, digest, str(path), spec, kind, known)
    return array


@dataclass
class FileReport:
    """What a dataset's ``verify`` found for one file (or folder)."""

    dataset: str
    split: str
    kind: str  # "images" | "labels" | "csv" | "folder"
    filename: str
    path: Path | None
    status: str  # "OK" | "MISSING" | "BAD"
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "OK"


# --------------------------------------------------------------------------- download

ProgressFactory = Callable[[int | None, str], Callable[[int], None]]
PART_MAX_AGE_S = 24 * 3600  # a .part file this old is abandoned, whoever wrote it
_HOST = re.sub(r"\W", "_", socket.gethostname())  # no "-" or ".": part names stay parseable


def tqdm_progress(total: int | None, desc: str) -> Callable[[int], None]:
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


class _LocalError(DataError):
    """The data folder cannot be written: no mirror can help, so no fall-through."""


def _local_error(folder: Path, e: OSError) -> _LocalError:
    return _LocalError(
        f"cannot write into {folder} ({e.strerror or e}): make it writable (or free space), or "
        f"download into another folder with --data-dir DIR or {ENV_VAR}=DIR"
    )


def _discard(path: Path) -> None:
    """Remove ``path`` if it is there; a failure here must never hide the real error."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def part_name(fname: str) -> str:
    """``<fname>.<host>-<pid>.part``: who writes it, so that a later run can tell if it died."""
    return f"{fname}.{_HOST}-{os.getpid()}.part"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # exists but is someone else's, or we cannot tell: keep its file
        return True
    return True


def clean_stale_parts(folder: Path, fnames: Iterable[str]) -> list[Path]:
    """Remove ``.part`` files of ``fnames`` left in ``folder`` by a killed download: those of a
    dead process on this host, or older than a day (another host's, or a reused pid).
    Returns what was removed; files that cannot be removed are left alone."""
    removed = []
    for fname in fnames:
        for part in folder.glob(f"{fname}.gz.*.part"):
            owner = part.name[len(fname) + 4 : -len(".part")]  # "<host>-<pid>" or "<pid>"
            host, _, pid = owner.rpartition("-")
            try:
                age = time.time() - part.stat().st_mtime
            except OSError:
                continue
            dead = pid.isdigit() and host in ("", _HOST) and not _pid_alive(int(pid))
            if dead or age > PART_MAX_AGE_S:
                _discard(part)
                if not part.exists():
                    removed.append(part)
    return removed


def download_cap(spec: FileSpec, kind: str) -> int:
    """The most bytes a gzip download of ``spec`` may send: its known size + 25% (mirrors
    recompress: MNIST's train images are 9.91 MB on the mirrors, 9.72 MB in another copy);
    without a known size, the content's size + 1% (gzip never expands data by more)."""
    if spec.size:
        return spec.size + spec.size // 4 + (1 << 16)
    size = content_size(spec, kind)
    return size + size // 100 + (1 << 16)


class _StreamCheck:
    """Checks a download as it arrives, holding nothing but the first 64 bytes: the exact IDX
    header, at most the exact content size (gzip is inflated incrementally), and the SHA-256
    of every byte of content."""

    def __init__(self, source: str, spec: FileSpec, kind: str):
        self.source, self.spec, self.kind = source, spec, kind
        self.header, self.size = expected_header(spec, kind), content_size(spec, kind)
        self.gz: bool | None = None  # known from the first bytes
        self.unzip = Gunzip(source, self.size)
        self.head, self.n, self.sha = b"", 0, hashlib.sha256()

    def feed(self, chunk: bytes) -> None:
        if self.gz is None:
            self.gz = chunk[:2] == GZIP_MAGIC
        for piece in self.unzip.feed(chunk) if self.gz else (chunk,):
            self.n += len(piece)
            if self.n > self.size:  # raw content (Gunzip stops gzip content itself)
                raise DataError(f"{self.source}: more than the expected {self.size:,} bytes")
            if len(self.head) < 64:
                self.head += piece[: 64 - len(self.head)]
                if len(self.head) == 64:
                    self._check_head()
            self.sha.update(piece)

    def _check_head(self) -> None:
        if self.head[: len(self.header)] == self.header[: len(self.head)]:
            return
        dtype, dims, _ = parse_header(self.head, self.source)  # names a bad magic, HTML, ...
        _, want, _ = parse_header(self.header)
        raise DataError(
            f"{self.source}: IDX header says {describe_idx(dtype, dims)}, expected "
            f"{describe_idx(np.dtype(np.uint8), want)} ({self.spec.name})"
        )

    def finish(self, known: Mapping[str, str] | None) -> None:
        if self.gz:
            self.unzip.finish()
        self._check_head()
        if self.n < self.size:
            raise DataError(
                f"{self.source}: content is {self.n:,} bytes, expected {self.size:,} "
                f"({self.spec.count} {self.kind}): truncated"
            )
        digest = self.sha.hexdigest()
        if digest != self.spec.sha256:
            raise _checksum_error(digest, self.source, self.spec, known)


def _write_all(f: BinaryIO, chunk: bytes, part: Path) -> None:
    try:
        f.write(chunk)
    except OSError as e:  # e.g. no space left on the device
        raise _local_error(part.parent, e) from None


def download_file(
    url: str,
    dest: Path,
    spec: FileSpec,
    kind: str,
    *,
    num_classes: int | None = None,  # unused: the checksum covers the label range
    timeout: float = 30.0,
    retries: int = 2,
    backoff: float = 0.5,
    progress: ProgressFactory | None = tqdm_progress,
    known: Mapping[str, str] | None = None,
) -> Path:
    """Fetch ``url`` into ``dest`` via a ``.part`` file renamed only after full verification.

    ``retries`` is the number of attempts at this URL (network errors, timeouts and HTTP 5xx
    are retried; HTTP 4xx, oversized and wrong content are not). Returns the final path
    (``dest``, minus a ``.gz`` suffix if the server sent raw IDX). Raises DataError naming
    the URL and the last problem, or (a subclass) naming the folder when it cannot be
    written; no ``.part`` file is left behind in any case.
    """
    dest = Path(dest)
    part = dest.with_name(part_name(dest.name))  # unique per process
    cap = download_cap(spec, kind)
    last_error = "no attempt made"
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    for attempt in range(1, max(1, retries) + 1):
        update = None
        try:
            try:  # before any network traffic: a read-only folder is not a mirror's fault
                f = open(part, "wb")  # closed by the with below
            except OSError as e:
                raise _local_error(dest.parent, e) from None
            with f, urllib.request.urlopen(request, timeout=timeout) as response:
                check = _StreamCheck(url, spec, kind)
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                if total is not None and total > max(cap, check.size):
                    raise DataError(f"{url}: announces {total:,} bytes, more than the "
                                    f"{max(cap, check.size):,} accepted for this file")
                update = progress(total, dest.name) if progress else None
                received = 0
                while chunk := response.read(1 << 16):
                    received += len(chunk)
                    check.feed(chunk)
                    if check.gz and received > cap:
                        raise DataError(f"{url}: sent more than the {cap:,} bytes accepted "
                                        "for this file; stopped")
                    _write_all(f, chunk, part)
                    if update:
                        update(len(chunk))
                check.finish(known)  # every byte verified: only now may it be renamed
            final = dest if check.gz else dest.with_name(spec.name)
            try:
                os.replace(part, final)
            except OSError as e:
                raise _local_error(dest.parent, e) from None
            return final
        except _LocalError:
            raise
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
            _discard(part)
        if attempt < retries:
            time.sleep(backoff * attempt)
    raise DataError(f"{url}: {last_error}")


def download_files(
    name: str,
    files: list[tuple[str, str, FileSpec]],
    mirrors: tuple[str, ...],
    data_dir: str | os.PathLike | None = None,
    *,
    num_classes: int | None = None,
    manual_help: str = "",
    known: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    retries: int = 2,
    backoff: float = 0.5,
    progress: ProgressFactory | None = tqdm_progress,
) -> Path:
    """Make sure every (split, kind, spec) file of ``name`` is present and verified; download
    what is missing into ``resolve_data_dir(data_dir)/<name>/``, trying each mirror in turn
    (the one that worked goes first for the next file). Returns that directory."""
    target = resolve_data_dir(data_dir) / name
    order = list(mirrors)
    new_dirs = [d for d in (target, *target.parents) if not d.exists()]  # made here, if any
    if target.is_dir():
        clean_stale_parts(target, [f.name for _, _, f in files])
    try:
        for split, kind, fspec in files:
            found = find_file(name, fspec.name, data_dir)
            if found is not None:
                verify_file(found, fspec, kind, num_classes, known)
                continue
            try:
                target.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise DataError(
                    f"cannot create {target} to download {name} into "
                    f"({e.strerror or e}); pass --data-dir or set {ENV_VAR} to a writable "
                    "directory"
                ) from None
            tried = []
            for base in list(order):
                url = base.rstrip("/") + f"/{fspec.name}.gz"
                try:
                    download_file(
                        url, target / f"{fspec.name}.gz", fspec, kind, timeout=timeout,
                        retries=retries, backoff=backoff, progress=progress, known=known,
                    )  # fmt: skip
                except _LocalError:
                    raise
                except DataError as e:
                    tried.append(str(e))
                    continue
                order.remove(base)
                order.insert(0, base)  # the next file tries the mirror that worked first
                break
            else:
                raise DataError(  # one line: what was tried, then what to do
                    f"could not download {name} {split} {kind} ({fspec.name}.gz); tried: "
                    + ("; ".join(tried) or "nothing: no mirror is known") + ". " + manual_help
                )
    finally:
        for d in new_dirs:  # leave no empty directory behind when nothing was downloaded
            with contextlib.suppress(OSError):
                if not d.is_dir() or any(d.iterdir()):
                    break
                d.rmdir()
    return target
