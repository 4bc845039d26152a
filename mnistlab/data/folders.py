"""Bring your own data: a folder given by path is a dataset (``--dataset ./my-digits``).

Two layouts are recognised:

- **IDX files**: ``DIR/train-images-idx3-ubyte[.gz]`` and ``DIR/train-labels-idx1-ubyte[.gz]``
  (the ``train-images.idx3-ubyte`` spelling too), optionally ``t10k-*`` for a test set and
  ``classes.txt`` (one class name per line; otherwise the classes are ``0..max label``).
  Structure is checked as for the registry's files; there is no checksum to compare.
- **Images in one folder per class**: ``DIR/<class>/*.png`` (also .jpg, .jpeg, .bmp, .gif,
  .webp), or ``DIR/train/<class>/`` and ``DIR/test/<class>/``. Class names are the sorted
  folder names (numerically when all are numbers, so ``2`` comes before ``10``); label = index.

Without a test set (no ``t10k-*`` files, no ``test/`` folder) a fixed stratified 20% is held
out as the test split (seed 12345, the same in every run); ``mnistlab data info`` says so.
Normalization (mean, std) is computed from the training part (everything but the test split).

How an image becomes a 28x28 uint8 array, ink high, as MNIST is stored:

- an image that is already 28x28 is taken as it is (converted to grayscale), because it is
  assumed to be laid out already (MNIST exported as PNGs, Fashion-MNIST, EMNIST); only its
  polarity is decided, per image: if the median of its border pixels is light (> 50%), it is
  dark ink on light paper and is inverted;
- any other size goes through :func:`mnistlab.preprocess.preprocess_image`, the pipeline
  ``mnistlab predict`` and the server use on photos and drawings: ink polarity detected,
  background removed, cropped to the ink, scaled to fit 20x20 and centred by mass in 28x28,
  as the MNIST digits were made. It suits drawings on a plain background (digits, letters,
  symbols); resize natural images to 28x28 yourself instead.

The dataset's name is the folder's resolved path, so a checkpoint trained on it records where
its data was and ``mnistlab eval`` finds it again. Decoded folders are cached per process,
keyed by every file's path, size and modification time.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .fetch import FileReport, check_pair, read_checked
from .idx import DataError
from .registry import Holdout, Source

TEST_SHARE = 0.2  # held out as test when a folder has no test set of its own
_IDX_NAMES = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
_LAYOUT_HELP = (
    "expected one folder of images per class (DIR/<class>/*.png), optionally under DIR/train/ "
    "and DIR/test/, or IDX files (DIR/train-images-idx3-ubyte[.gz] and "
    "DIR/train-labels-idx1-ubyte[.gz])"
)


def folder_source(root: str | os.PathLike) -> Source:
    """The source for a folder: IDX files if it holds a train images or labels file, else a
    folder of images. ``root`` must be an existing directory."""
    root = Path(root).expanduser().resolve()
    if any(_find(root, _IDX_NAMES["train", kind]) for kind in ("images", "labels")):
        return IdxFolderSource(root)
    return ImageFolderSource(root)


def _find(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        for candidate in (root / f"{name}.gz", root / name):
            if candidate.is_file():
                return candidate
    return None


def _visible(folder: Path) -> list[os.DirEntry]:
    """The entries of ``folder`` not hidden, sorted by name (their types come with the
    listing: no stat per file)."""
    try:
        with os.scandir(folder) as entries:
            return sorted((e for e in entries if not e.name.startswith(".")),
                          key=lambda e: e.name)  # fmt: skip
    except OSError as e:
        raise DataError(f"{folder}: cannot list ({e.strerror or e})") from None


def _class_order(names: list[str]) -> list[str]:
    return sorted(names, key=int) if all(n.isdigit() for n in names) else sorted(names)


class _Folder(Source):
    """A folder of the user's: named by its resolved path; nothing to download."""

    def __init__(self, root: Path):
        self.root, self.name = root, str(root)
        self.mean = self.std = None  # computed from the training part when loaded

    def fetch(self, data_dir=None, **network) -> Path:
        bad = [r for r in self.verify(data_dir) if not r.ok]
        if bad:
            raise DataError(bad[0].detail)
        return self.root


# --------------------------------------------------------------------------- IDX files


class IdxFolderSource(_Folder):
    """IDX files in a folder of the user's."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.paths = {key: _find(root, names) for key, names in _IDX_NAMES.items()}
        has_test = [self.paths["test", k] is not None for k in ("images", "labels")]
        self.holdout = None if all(has_test) else Holdout(TEST_SHARE)
        self._one_sided = any(has_test) and not all(has_test)

    def _path(self, part: str, kind: str) -> Path:
        path = self.paths[part, kind]
        if path is None:
            other = "labels" if kind == "images" else "images"
            raise DataError(
                f"{self.root}: found the {part} {other} file but no {part} {kind} file "
                f"({_IDX_NAMES[part, kind][0]}[.gz]); expected both or, for test, neither"
            )
        return path

    @functools.cached_property
    def classes(self) -> tuple[str, ...]:  # type: ignore[override]
        names_file = self.root / "classes.txt"
        if names_file.is_file():
            try:
                lines = names_file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise DataError(f"{names_file}: cannot read ({e})") from None
            names = tuple(line.strip() for line in lines if line.strip())
            if len(names) < 2:
                raise DataError(f"{names_file}: expected at least 2 class names, one a line")
            return names
        top = max(
            int(read_checked(self._path(part, "labels"), "labels")[0].max(initial=0))
            for part in ("train", "test") if part == "train" or not self.holdout
        )  # fmt: skip
        return tuple(str(i) for i in range(top + 1))

    def read(self, part, data_dir=None, download=True):
        if self._one_sided:  # a t10k file without its partner: say which one is missing
            for kind in ("images", "labels"):
                self._path("test", kind)
        files_part = "train" if part == "all" else part
        img, lbl = self._path(files_part, "images"), self._path(files_part, "labels")
        images, _ = read_checked(img, "images")
        labels, _ = read_checked(lbl, "labels", len(self.classes))
        check_pair(images, labels, str(img), str(lbl))
        return images, labels

    def verify(self, data_dir=None):
        reports = []
        for (part, kind), path in self.paths.items():
            if part == "test" and self.holdout and not self._one_sided:
                continue
            name = _IDX_NAMES[part, kind][0]
            report = FileReport(self.name, part, kind, name, path, "MISSING", f"not in {self.root}")
            if path is not None:
                try:
                    n = len(read_checked(path, kind, len(self.classes) if kind == "labels" else None
                                         )[0])  # fmt: skip
                    report.status, report.detail = "OK", f"{n} {kind}, structure checked"
                except DataError as e:
                    report.status, report.detail = "BAD", str(e)
            reports.append(report)
        for part in ("train", "test"):
            pair = [r for r in reports if r.split == part and r.ok]
            if len(pair) == 2:
                try:
                    self.read(part if part == "test" else ("all" if self.holdout else "train"))
                except DataError as e:
                    pair[1].status, pair[1].detail = "BAD", str(e)
        return reports

    def describe(self) -> str:
        return f"IDX files in {self.root}; " + (
            self.holdout.describe() if self.holdout else "test: its t10k files"
        )


# ------------------------------------------------------------------------------ images


def image_to_mnist(path: Path) -> np.ndarray:
    """One image file -> (28, 28) uint8, ink high (see the module docstring for the rule)."""
    from .. import preprocess as pp  # Pillow; a leaf module, needed only for image folders

    try:
        gray, alpha = pp.to_gray(pp.open_image(path))  # (H, W) 0..1, 1 = white
        if gray.shape == (pp.SIZE, pp.SIZE):
            if alpha is not None and np.ptp(gray) < pp.MIN_CONTRAST <= np.ptp(alpha):
                ink = alpha  # one colour drawn on a transparent canvas: the alpha is the ink
            else:
                border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
                ink = 1.0 - gray if np.median(border) > 0.5 else gray
        else:
            ink = pp.mnist_layout(pp.working_ink(gray, alpha))
    except pp.PreprocessError as e:
        message = str(e)
        raise DataError(message if message.startswith(str(path)) else f"{path}: {message}"
                        ) from None  # fmt: skip
    return np.round(ink * 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _decode(files: tuple[Path, ...], stamps: tuple[tuple[int, int], ...]) -> np.ndarray:
    images = np.stack([image_to_mnist(f) for f in files]) if files else np.zeros((0, 28, 28))
    images = images.astype(np.uint8, copy=False)
    images.flags.writeable = False  # shared by the cache
    return images


class ImageFolderSource(_Folder):
    """Images in one folder per class, optionally under train/ and test/."""

    @functools.cached_property
    def _layout(self) -> dict[str, list[tuple[str, list[Path]]]]:
        """part ("all", or "train" and "test") -> [(class name, image files)]."""
        from ..preprocess import EXTENSIONS

        names = {e.name for e in _visible(self.root) if e.is_dir()}
        if "train" in names and names <= {"train", "test"}:
            parts = {n: self.root / n for n in ("train", "test") if n in names}
        else:
            parts = {"all": self.root}
        layout = {}
        for part, folder in parts.items():
            entries = _visible(folder)
            classes = {e.name: Path(e.path) for e in entries if e.is_dir()}
            if not classes:
                loose = sum(Path(e.name).suffix.lower() in EXTENSIONS for e in entries)
                what = (f"{loose} images but no class folders" if loose else
                        "no class folders" if entries else "empty folder")  # fmt: skip
                raise DataError(f"{folder}: {what}; {_LAYOUT_HELP}")
            entries = []
            for name in _class_order(list(classes)):
                files = [Path(e.path) for e in _visible(classes[name])
                         if e.is_file() and Path(e.name).suffix.lower() in EXTENSIONS]  # fmt: skip
                if not files:
                    raise DataError(
                        f"{classes[name]}: class {name!r} has no images (expected "
                        f"{', '.join(EXTENSIONS)} files; class folders hold images, not folders)"
                    )
                entries.append((name, files))
            layout[part] = entries
        if len(layout.get("all", layout.get("train", []))) < 2:
            raise DataError(f"{self.root}: found one class folder; expected at least 2 classes")
        return layout

    @property
    def classes(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(name for name, _ in self._layout.get("all", self._layout.get("train", [])))

    @property
    def holdout(self) -> Holdout | None:  # type: ignore[override]
        return None if "test" in self._layout else Holdout(TEST_SHARE)

    def read(self, part, data_dir=None, download=True):
        index = {name: i for i, name in enumerate(self.classes)}
        files, labels = [], []
        for name, paths in self._layout[part]:
            if name not in index:
                raise DataError(
                    f"{self.root / part / name}: class {name!r} is not among the training "
                    f"classes ({', '.join(self.classes)})"
                )
            files += paths
            labels += [index[name]] * len(paths)
        try:
            stamps = tuple((st.st_mtime_ns, st.st_size) for st in (f.stat() for f in files))
        except OSError as e:
            raise DataError(f"{e.filename}: cannot read ({e.strerror or e})") from None
        return _decode(tuple(files), stamps), np.array(labels, dtype=np.int64)

    def verify(self, data_dir=None):
        try:
            parts = list(self._layout)
        except DataError as e:
            return [FileReport(self.name, "all", "folder", self.root.name, self.root, "BAD",
                               str(e))]  # fmt: skip
        reports = []
        for part in parts:
            folder = self.root if part == "all" else self.root / part
            report = FileReport(self.name, part, "folder", folder.name, folder, "OK")
            try:
                images, labels = self.read(part)
                report.detail = f"{len(images)} images in {len(np.unique(labels))} classes"
            except DataError as e:
                report.status, report.detail = "BAD", str(e)
            reports.append(report)
        return reports

    def describe(self) -> str:
        return f"images in class folders under {self.root}; " + (
            self.holdout.describe() if self.holdout else "test: its test/ folder"
        )
