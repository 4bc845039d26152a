"""`mnistlab data download|verify|info|show`: get, check and look at datasets.

Exit codes: 0 fine, 2 bad input or a data problem (missing, corrupted or undownloadable
files), reported as one ``mnistlab: error: ...`` line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError, DataError
from .common import command

EXIT_OK = 0
DEFAULT_DATASET = "mnist"
# == BASE_NAMES, ENV_VAR, SPLITS (tested): literal here so that building the
# parser for --help does not import NumPy
BASE_NAMES = ("mnist", "fashion-mnist", "mnist-5k")
ENV_VAR = "MNISTLAB_DATA_DIR"
SPLITS = ("train", "val", "test", "all")


def _fail(message: str) -> int:
    raise DataError(message)


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


# ------------------------------------------------------------------------------ handlers


def cmd_download(args: argparse.Namespace) -> int:
    from .. import data

    data.download(
        args.dataset,
        args.data_dir,
        timeout=args.timeout,
        retries=args.retries,
        progress=None if args.quiet else data.tqdm_progress,
    )
    reports = data.verify_dataset(args.dataset, args.data_dir)
    for r in reports:
        print(f"{r.status:<4} {r.path}")
    base, _ = data.parse_name(args.dataset)
    print(f"{base}: all {_files(len(reports))} present and verified")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from .. import data

    reports = data.verify_dataset(args.dataset, args.data_dir)
    width = max(len(f"{r.split} {r.kind}") for r in reports)
    for r in reports:
        where = str(r.path) if r.path else r.filename
        print(f"{r.status:<7} {r.split + ' ' + r.kind:<{width}}  {where}")
        detail = r.detail.replace(f"{r.path}: ", "") if r.path else r.detail
        print(f"        {detail}")
    bad = [r for r in reports if not r.ok]
    base = reports[0].dataset
    if bad:
        missing = sum(r.status == "MISSING" for r in bad)
        hint = (
            f"; `mnistlab data download --dataset {base}` fetches missing files"
            if missing and data.source(base).downloadable
            else ""
        )
        return _fail(f"{base}: {len(bad)} of {_files(len(reports))} with problems{hint}")
    print(f"{base}: {_files(len(reports))} OK")
    return EXIT_OK


def _splits(args: argparse.Namespace) -> list[str]:
    return [args.split] if args.split else ["train", "val", "test"]


def cmd_info(args: argparse.Namespace) -> int:
    from .. import data

    loaded = [
        data.load(args.dataset, s, data_dir=args.data_dir, download=not args.no_download,
                  val_size=args.val_size, seed=args.seed)
        for s in _splits(args)
    ]  # fmt: skip
    first = loaded[0]
    print(
        f"dataset {first.name}: {first.num_classes} classes, 28x28 uint8 images, "
        f"normalization mean {first.mean:.4f} std {first.std:.4f}"
    )
    print(f"source: {data.source(args.dataset).describe()}")
    print(f"{'split':<6} {'images':>8} {'pixel mean':>11} {'pixel std':>10} {'zero px':>8}")
    for ds in loaded:
        mean, std = data.pixel_stats(ds.images)
        zeros = (ds.images == 0).mean() if len(ds) else float("nan")
        print(f"{ds.split:<6} {len(ds):>8,} {mean:>11.4f} {std:>10.4f} {zeros:>8.1%}")
    name_w = max(8, *(len(c) for c in first.classes))
    print("\nclass balance (count, share of the split):")
    print(f"{'label':>5} {'class':<{name_w}} " + " ".join(f"{ds.split:>15}" for ds in loaded))
    counts = [ds.class_counts() for ds in loaded]
    for i, cls in enumerate(first.classes):
        cells = [
            f"{int(c[i]):>7,} ({c[i] / max(1, c.sum()):>5.1%})" for c in counts
        ]  # fmt: skip
        print(f"{i:>5} {cls:<{name_w}} " + " ".join(f"{cell:>15}" for cell in cells))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    import numpy as np

    from .. import data
    from ..plots import image_grid

    split = args.split or "train"
    ds = data.load(args.dataset, split, data_dir=args.data_dir, download=not args.no_download,
                   val_size=args.val_size, seed=args.seed)  # fmt: skip
    if args.n < 1:
        raise ConfigError(f"--n: must be at least 1, got {args.n}")
    if len(ds) == 0:
        return _fail(f"{ds.name} {split} is empty")
    n = min(args.n, len(ds))
    idx = np.random.default_rng(args.seed).choice(len(ds), n, replace=False)
    out = Path(args.out or f"{data.slug(ds.name).replace(',', '-')}-{split}.png")
    titles = [f"{ds.classes[ds.labels[i]]}" for i in idx]
    image_grid(ds.images[idx], titles, out, args.ncols,
               suptitle=f"{ds.name} {split}: {n} of {len(ds):,} (seed {args.seed})")  # fmt: skip
    print(f"wrote {out} ({n} images of {ds.name} {split})")
    return EXIT_OK


# ------------------------------------------------------------------------------ parser


def _common(p: argparse.ArgumentParser, *, dataset_help: str) -> None:
    p.add_argument(
        "--dataset", "-d", default=DEFAULT_DATASET, metavar="NAME",
        help=f"{dataset_help} (default {DEFAULT_DATASET}; one of {', '.join(BASE_NAMES)}, "
        "a folder of class folders of images or of IDX files, or a class subset such as "
        "mnist:0-4)",
    )  # fmt: skip
    p.add_argument(
        "--data-dir", metavar="DIR", default=None,
        help=f"data directory (default ${ENV_VAR}, else ~/.cache/mnistlab)",
    )  # fmt: skip


def _loading(p: argparse.ArgumentParser, *, split_help: str) -> None:
    p.add_argument("--split", choices=SPLITS, default=None, help=split_help)
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split and samples")
    p.add_argument("--val-size", type=int, default=None, metavar="N",
                   help="validation hold-out (default 5,000, or 10%% of small datasets)")  # fmt: skip
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading")


def register(subparsers) -> None:
    """Add ``data`` and its sub-commands to the main parser's subparsers."""
    parser = command(
        subparsers,
        "data",
        "download, verify and look at datasets",
        description="Download, verify and look at datasets. Files are searched in --data-dir, "
        f"${ENV_VAR}, the per-user cache ($XDG_CACHE_HOME/mnistlab or ~/.cache/mnistlab) "
        "and /usr/share/datasets/<name>.",
    )
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("download", help="fetch the missing files of a dataset from its mirrors")
    _common(p, dataset_help="dataset to fetch")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds of network silence "
                   "before a mirror is given up (default 30)")  # fmt: skip
    p.add_argument("--retries", type=int, default=2, help="attempts per mirror (default 2)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("verify", help="check every file of a dataset; exit 2 on any problem")
    _common(p, dataset_help="dataset to check")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("info", help="sizes, class balance and pixel statistics per split")
    _common(p, dataset_help="dataset to describe")
    _loading(p, split_help="one split (default: train, val and test)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("show", help="write a PNG grid of sample images with their labels")
    _common(p, dataset_help="dataset to show")
    _loading(p, split_help="split to sample (default train)")
    p.add_argument("--n", type=int, default=36, help="number of images (default 36)")
    p.add_argument("--ncols", type=int, default=None, help="grid columns (default about square)")
    p.add_argument("--out", "-o", metavar="PNG", default=None,
                   help="output file (default <dataset>-<split>.png)")  # fmt: skip
    p.set_defaults(func=cmd_show)
