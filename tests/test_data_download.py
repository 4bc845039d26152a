"""Bounded, robust downloads (issue 16, item 5), against a real HTTP server on 127.0.0.1.

A hostile or broken mirror must not be able to fill the disk or the memory, a read-only or
full data folder gets one clear error naming it, a failing cleanup never hides the real
error nor stops the fall-through to the next mirror, and a killed download's ``.part`` file
is removed by the next one.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from helpers_data import (
    http_server,
    run_cli,
    send_bytes,
    send_stream,
    send_then_stall,
)

from mnistlab import data
from mnistlab.data import DataError, fetch

pytestmark = pytest.mark.usefixtures("data_isolated")  # no real data directory leaks in
MB = 1 << 20


def _routes(tiny, prefix: str, make) -> dict:
    return {f"/{prefix}/{f}.gz": make(f) for f in tiny.filenames}


def _good(tiny, prefix: str = "ok") -> dict:
    return _routes(tiny, prefix, lambda f: send_bytes(tiny.gz(f)))


def _leftovers(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.name.endswith((".part", ".tmp")))


# -------------------------------------------------------------------------- size limits


EMPTY_MEMBER = gzip.compress(b"", mtime=0)  # 20 bytes of valid gzip that inflate to nothing


@pytest.mark.parametrize(
    "case, message",
    [
        ("announced", r"announces 209,715,200 bytes, more than the 223,920 accepted"),
        ("gzip-padding", r"sent more than the 223,920 bytes accepted for this file; stopped"),
        ("raw-overflow", r"more than the expected 156,816 bytes"),
    ],
)
def test_an_oversized_stream_is_cut_off(tiny, tmp_path, case, message):
    """200 MB offered for a 157 kB file: the download stops after a few hundred kB."""
    fname = tiny.filenames[0]  # train images: 200 x 28 x 28, 156,816 bytes of content
    spec = tiny.spec.files["train"][0]
    assert fetch.content_size(spec, "images") == 156_816
    assert fetch.download_cap(spec, "images") == 223_920  # no known size: content + 1% + 64 KiB
    head = {  # what the stream starts with; then padding up to 200 MB
        "announced": (tiny.gz(fname), EMPTY_MEMBER * 3276),
        "gzip-padding": (EMPTY_MEMBER, EMPTY_MEMBER * 3276),  # valid gzip, inflates to nothing
        "raw-overflow": (tiny.content(fname), bytes(64 * 1024)),  # raw IDX, then extra bytes
    }[case]
    sent: list[int] = []
    route = send_stream(*head, 200 * MB, announce=case == "announced", sent=sent)
    with http_server({f"/big/{fname}.gz": route, **_good(tiny)}) as srv:
        with pytest.raises(DataError, match=message):
            data.download_file(f"{srv.url}/big/{fname}.gz", tmp_path / f"{fname}.gz", spec,
                               "images", progress=None, retries=1)  # fmt: skip
        # the same bad mirror first, then a good one: the download falls through to it
        target = data.download("tiny", tmp_path / "dl", mirrors=(f"{srv.url}/big/",
                               f"{srv.url}/ok/"), progress=None, retries=1)  # fmt: skip
    assert all(r.ok for r in data.verify_dataset("tiny", tmp_path / "dl"))
    assert srv.log[:3] == [f"/big/{fname}.gz"] * 2 + [f"/ok/{fname}.gz"]
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == []  # nothing kept
    assert _leftovers(tmp_path) == [] and target == tmp_path / "dl" / "tiny"
    # what the server wrote before the client hung up: socket buffers, not 200 MB
    assert len(sent) == 2 and max(sent) < 40 * MB, sent


def _bomb(header: bytes, expands_to: int) -> bytes:
    """A gzip stream: ``header``, then ``expands_to`` zero bytes, in 16 MiB members."""
    block = gzip.compress(bytes(16 * MB), mtime=0)  # ~16 kB
    return gzip.compress(header, mtime=0) + block * (expands_to // (16 * MB))


def test_a_gzip_bomb_is_rejected_with_bounded_memory(tmp_path):
    """1 MB that inflates to 1 GiB, posing as MNIST's train images (47 MB): stopped at the
    expected size, holding about 1 MiB at a time (the old code held all of it: 1 GiB)."""
    spec = data.REGISTRY["mnist"].files["train"][0]
    bomb = _bomb(fetch.expected_header(spec, "images"), 1 << 30)
    assert len(bomb) < 1.1 * MB  # small enough to pass the size cap (~12 MB for this file)
    with http_server({"/m/bomb.gz": send_bytes(bomb)}) as srv:
        tracemalloc.start()
        try:
            with pytest.raises(DataError, match=r"decompresses to more than the expected "
                               r"47,040,016 bytes; stopped"):  # fmt: skip
                data.download_file(f"{srv.url}/m/bomb.gz", tmp_path / "x.gz", spec, "images",
                                   progress=None, retries=1)  # fmt: skip
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 16 * MB, f"peak {peak / MB:.1f} MiB while rejecting a gzip bomb"
    assert list(tmp_path.iterdir()) == []


def test_a_local_gzip_bomb_is_stopped_at_its_header_size(tmp_path):
    """A file in the data folder is read no further than its IDX header promises."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    header = data.idx_bytes(np.zeros((2, 28, 28), np.uint8))[:16]  # promises 1,584 bytes
    path.write_bytes(_bomb(header, 256 * MB))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=rf"{path}: decompresses to more than the expected "
                           r"67,120 bytes"):  # 1,584 + 64 KiB of slack for trailing bytes
            data.read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MB, f"peak {peak / MB:.1f} MiB"


def test_raw_idx_from_a_mirror_is_verified_and_kept_raw(tiny, tmp_path):
    """A mirror may send raw IDX: it is checked byte for byte as well (the last byte flipped
    is refused), and saved without the .gz suffix."""
    fname = tiny.filenames[1]
    spec, raw = tiny.spec.files["train"][1], tiny.content(fname)
    flipped = raw[:-1] + bytes([raw[-1] ^ 1])
    routes = {"/raw/x.gz": send_bytes(raw), "/bad/x.gz": send_bytes(flipped)}
    with http_server(routes) as srv:
        with pytest.raises(DataError, match="content checksum mismatch"):
            data.download_file(f"{srv.url}/bad/x.gz", tmp_path / f"{fname}.gz", spec, "labels",
                               progress=None, retries=1)  # fmt: skip
        assert list(tmp_path.iterdir()) == []
        final = data.download_file(f"{srv.url}/raw/x.gz", tmp_path / f"{fname}.gz", spec,
                                   "labels", progress=None)  # fmt: skip
    assert final == tmp_path / fname and final.read_bytes() == raw


# ------------------------------------------------------------------- the data folder


def _refuse_writes(folder: Path, monkeypatch, exc: OSError) -> None:
    """Make ``folder`` refuse new files: really (chmod) where permissions apply; as root,
    which ignores them, by making the downloader's ``open`` fail there (fault injection)."""
    folder.chmod(0o555)
    probe = folder / "probe"
    try:
        probe.write_bytes(b"")
    except OSError:
        return  # really read-only
    probe.unlink()
    real_open = open

    def guarded(path, mode="r", *args, **kwargs):
        if "w" in mode and Path(path).parent == folder:
            raise exc
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(fetch, "open", guarded, raising=False)


def test_a_read_only_data_folder_gives_one_clear_error(tiny, tmp_path, monkeypatch, capsys):
    target = tmp_path / "dl" / "tiny"
    target.mkdir(parents=True)
    _refuse_writes(target, monkeypatch, PermissionError(errno.EACCES, "Permission denied"))
    try:
        with http_server(_good(tiny)) as srv:
            spec = data.DatasetSpec(**{**tiny.spec.__dict__, "mirrors": (f"{srv.url}/ok/",)})
            monkeypatch.setitem(data.REGISTRY, "tiny", spec)
            with pytest.raises(DataError) as err:
                data.download("tiny", tmp_path / "dl", progress=None)
            capsys.readouterr()
            rc, _, err_text = run_cli(["download", "-d", "tiny", "--data-dir",
                                       str(tmp_path / "dl"), "-q"], capsys)  # fmt: skip
    finally:
        target.chmod(0o755)
    assert str(err.value) == (
        f"cannot write into {target} (Permission denied): make it writable (or free space), "
        "or download into another folder with --data-dir DIR or MNISTLAB_DATA_DIR=DIR"
    )
    assert srv.log == []  # a local problem: no mirror was bothered, none blamed
    assert rc == 2 and err_text == f"mnistlab: error: {err.value}\n"


def test_a_full_disk_is_reported_not_blamed_on_the_mirror(tiny, tmp_path, monkeypatch):
    real_open = open

    class Full:  # a file whose writes fail as on a full disk
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(fetch, "open", lambda p, m="r", *a, **k: Full(real_open(p, m, *a, **k)),
                        raising=False)  # fmt: skip
    with http_server({**_good(tiny, "a"), **_good(tiny, "b")}) as srv:
        with pytest.raises(DataError, match=r"^cannot write into .*dl/tiny \(No space left on "
                           r"device\): make it writable \(or free space\)"):  # fmt: skip
            data.download("tiny", tmp_path / "dl", mirrors=(f"{srv.url}/a/", f"{srv.url}/b/"),
                          progress=None)  # fmt: skip
    assert srv.log == [f"/a/{tiny.filenames[0]}.gz"]  # not retried, not tried elsewhere
    assert _leftovers(tmp_path) == []


def test_a_failing_cleanup_neither_hides_the_error_nor_stops_the_fall_through(
    tiny, tmp_path, monkeypatch
):
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self.name.endswith(".part"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)

    def corrupt(f):
        raw = tiny.content(f)
        return send_bytes(gzip.compress(raw[:-1] + bytes([raw[-1] ^ 1])))

    routes = {**_routes(tiny, "bad", corrupt), **_good(tiny)}
    with http_server(routes) as srv:
        with pytest.raises(DataError) as err:
            data.download("tiny", tmp_path / "a", mirrors=(f"{srv.url}/bad/",), progress=None)
        data.download("tiny", tmp_path / "b", mirrors=(f"{srv.url}/bad/", f"{srv.url}/ok/"),
                      progress=None)  # fmt: skip
    assert "content checksum mismatch" in str(err.value)
    assert "Permission denied" not in str(err.value)
    assert all(r.ok for r in data.verify_dataset("tiny", tmp_path / "b"))
    first = tiny.filenames[0]
    assert srv.log[1:3] == [f"/bad/{first}.gz", f"/ok/{first}.gz"]


# -------------------------------------------------------------------------- .part files


CHILD = """
import json, sys
from pathlib import Path
from mnistlab.data import fetch
url, dest, spec = json.loads(sys.argv[1])
fetch.download_file(url, Path(dest), fetch.FileSpec(**spec), "images", progress=None,
                    timeout=60, retries=1)
"""


def _wait_for(predicate, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def test_stale_part_files_are_cleaned_when_safe(tiny, tmp_path):
    """A download killed with SIGKILL leaves its .part; the next download removes it, and
    those of old or other-host writers as they age, but not a live process's."""
    target = tmp_path / "dl" / "tiny"
    target.mkdir(parents=True)
    fname = tiny.filenames[0]
    body = tiny.gz(fname)
    spec = tiny.spec.files["train"][0]
    routes = {f"/slow/{fname}.gz": send_then_stall(body, len(body) // 2), **_good(tiny)}
    with http_server(routes) as srv:
        job = json.dumps([f"{srv.url}/slow/{fname}.gz", str(target / f"{fname}.gz"),
                          spec.__dict__])  # fmt: skip
        child = subprocess.Popen([sys.executable, "-c", CHILD, job])
        try:
            killed = _wait_for(lambda: [p for p in target.glob("*.part") if p.stat().st_size])
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert [p.name for p in killed] == [f"{fname}.gz.{fetch._HOST}-{child.pid}.part"]

        gz = f"{fname}.gz"
        day_old = time.time() - fetch.PART_MAX_AGE_S - 60
        stale = {
            "killed": killed[0],
            "old-format": target / f"{gz}.{child.pid}.part",  # <pid>.part, before hosts
            "old": target / f"{gz}.elsewhere-{os.getpid()}.part",
        }
        kept = {
            "live": target / f"{gz}.{fetch._HOST}-{os.getppid()}.part",  # pytest's parent
            "other-host": target / f"{gz}.elsewhere-{child.pid}.part",  # cannot tell: young
            "not-ours": target / "notes.part",
        }
        for p in [*stale.values(), *kept.values()]:
            if not p.exists():
                p.write_bytes(b"partial")
        os.utime(stale["old"], (day_old, day_old))
        data.download("tiny", tmp_path / "dl", mirrors=(f"{srv.url}/ok/",), progress=None)
    assert {k for k, p in stale.items() if p.exists()} == set()
    assert {k for k, p in kept.items() if p.exists()} == set(kept)
    assert all(r.ok for r in data.verify_dataset("tiny", tmp_path / "dl"))


def test_every_byte_is_verified_before_the_rename(tiny, tmp_path):
    """Over plain http a man in the middle can change any byte: the checksum of the whole
    content is what protects, so a change in the very last byte still leaves nothing."""
    fname = tiny.filenames[0]
    spec = tiny.spec.files["train"][0]
    raw = tiny.content(fname)
    for at in (0, 20, len(raw) // 2, len(raw) - 1):
        body = gzip.compress(raw[:at] + bytes([raw[at] ^ 0x80]) + raw[at + 1 :], mtime=0)
        with http_server({"/x.gz": send_bytes(body)}) as srv:
            with pytest.raises(DataError):
                data.download_file(f"{srv.url}/x.gz", tmp_path / f"{fname}.gz", spec, "images",
                                   progress=None, retries=1)  # fmt: skip
        assert list(tmp_path.iterdir()) == [], at
    assert hashlib.sha256(raw).hexdigest() == spec.sha256
