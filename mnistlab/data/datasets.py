"""Datasets by name: ``load(name, split)``, splits, class subsets, few-label sampling.

A name is a registry name (``mnist``, ``fashion-mnist``, ``mnist-5k``), a path to a folder
of the user's (see :mod:`mnistlab.data.folders`), either optionally followed by a class
subset such as ``mnist:0-4`` or ``fashion-mnist:0,2,4`` (relabelled to 0..k-1, names kept).
A registry name wins over a folder of the same name: write ``./mnist`` for the folder.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fetch import FileReport, ProgressFactory, tqdm_progress
from .folders import folder_source
from .idx import DataError
from .registry import REGISTRY, Source, known_names

SPLITS = ("train", "val", "test", "all")


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str  # e.g. "mnist", "mnist:5-9", "/home/me/digits" (a folder, resolved)
    split: str  # "train" | "val" | "test" | "all"
    images: np.ndarray  # (N, 28, 28) uint8
    labels: np.ndarray  # (N,) int64 in 0..len(classes)-1
    classes: tuple[str, ...]  # index = label
    mean: float  # normalization of the parent dataset's training part (0..1 scale)
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


# ------------------------------------------------------------------------------- names


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.startswith((".", "~"))


def _resolve(name: str) -> tuple[str, str | None, Source]:
    """(base, class selection or None, source). Registry names first, then folders; a path
    may itself contain ':' (then the selection is what follows the last one)."""
    base, colon, sel = name.partition(":")
    if base in REGISTRY:
        return base, sel if colon else None, REGISTRY[base]
    folder, sel = Path(name).expanduser(), None
    if not folder.exists() and ":" in name:
        head, _, sel = name.rpartition(":")
        folder = Path(head).expanduser()
    if folder.is_dir():
        src = folder_source(folder)
        return src.name, sel, src
    if folder.exists():
        raise DataError(f"{folder}: not a folder; a dataset given by path is a folder of class "
                        "folders of images, or of IDX files")  # fmt: skip
    if _looks_like_path(name):
        raise DataError(f"{folder}: no such folder")
    raise DataError(
        f"unknown dataset {base!r}; expected one of {', '.join(known_names())}, "
        "or the path of a folder of images or IDX files"
    )


def _select(name: str, base: str, sel: str, n_classes: int) -> list[int]:
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
    return chosen


def source(name: str) -> Source:
    """The source of ``name``'s examples (a subset's is its parent's)."""
    return _resolve(name)[2]


def parse_name(name: str) -> tuple[str, list[int] | None]:
    """'mnist:5-9' -> ('mnist', [5, 6, 7, 8, 9]); 'mnist' -> ('mnist', None); a folder's
    base is its resolved path."""
    base, sel, src = _resolve(name)
    return base, None if sel is None else _select(name, base, sel, len(src.classes))


def canonical_name(name: str) -> str:
    """The name to record: registry names as they are, folders by their resolved path."""
    base, sel, _ = _resolve(name)
    return base if sel is None else f"{base}:{sel}"


def slug(name: str) -> str:
    """A short label for file names, without touching the data: 'mnist:0-4' -> 'mnist_0-4',
    '/home/me/digits' -> 'digits', './digits:0,1' -> 'digits_0,1'."""
    base, colon, sel = name.partition(":")
    if base not in REGISTRY and _looks_like_path(name):
        base, colon, sel = name.rpartition(":") if ":" in Path(name).name else (name, "", "")
        base = Path(base).expanduser().resolve().name or "data"
    return f"{base}_{sel}" if colon else base


def default_val_size(name: str, n_train: int) -> int:
    """5,000 for the full datasets; 10% of the training set when that is smaller."""
    return _val_size(source(name), n_train)


def _val_size(src: Source, n_train: int) -> int:
    return min(n_train if src.val_size is None else src.val_size, n_train // 10)


# ---------------------------------------------------------------------- reading parts


def _official(
    src: Source, part: str, data_dir, download: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The source's "train" or "test" part; a source without a test set of its own is read
    whole and its fixed stratified test split is set aside."""
    if src.holdout is None:
        return src.read(part, data_dir, download)
    images, labels = src.read("all", data_dir, download)
    trainval, test = stratified_split(labels, src.holdout.count(len(labels)), src.holdout.seed)
    idx = test if part == "test" else trainval
    return images[idx], labels[idx]


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
    A class subset's splits are the parent's splits filtered to those classes. ``data_dir``
    is where registry datasets are looked for; folders given by path are read where they are.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    base, sel, src = _resolve(name)
    classes = src.classes
    chosen = None if sel is None else _select(name, base, sel, len(classes))
    images, labels = _official(src, "test" if split == "test" else "train", data_dir, download)
    if src.mean is not None:
        mean, std = src.mean, src.std
    else:  # the user's own data: normalize with its training part's statistics
        train_images = images if split != "test" else _official(src, "train", data_dir, False)[0]
        mean, std = pixel_stats(train_images)
    if split in ("train", "val"):
        n_val = _val_size(src, len(labels)) if val_size is None else val_size
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
    name = base if sel is None else f"{base}:{sel}"  # a folder by its resolved path
    return Dataset(name, split, images, labels, classes, mean, std)


def verify_dataset(name: str, data_dir: str | os.PathLike | None = None) -> list[FileReport]:
    """Check every file of a dataset (a subset name checks its base); never raises DataError
    for a file problem, reports it instead."""
    return source(name).verify(data_dir)


def download(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    mirrors: tuple[str, ...] | None = None,
    timeout: float = 30.0,
    retries: int = 2,
    backoff: float = 0.5,
    progress: ProgressFactory | None = tqdm_progress,
    spec: Source | None = None,
) -> Path:
    """Make sure every file of ``name`` is present and verified, downloading what is missing
    (registry datasets with mirrors, into ``resolve_data_dir(data_dir)/<name>/``, trying each
    mirror in turn); returns where the data is. ``spec`` overrides the registry entry."""
    src = spec or source(name)
    return src.fetch(data_dir, mirrors=mirrors, timeout=timeout, retries=retries,
                     backoff=backoff, progress=progress)  # fmt: skip


# ----------------------------------------------------------------------- splits, samples


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
