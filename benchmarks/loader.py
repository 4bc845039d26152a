"""Loader and augmentation throughput, side by side with the straightforward ways.

    MNISTLAB_DATA_DIR=/path/to/data python benchmarks/loader.py [--threads 2] [--repeats 7]

Rows (images/s, median over repeats, repeats of all rows interleaved so that load from other
processes hits them alike):

1. reference: the official PyTorch MNIST example's pattern, a ``torch.utils.data.DataLoader``
   (batch 64, shuffled, no workers) over a map-style Dataset whose ``__getitem__`` converts one
   uint8 image to float and normalizes it;
2. ``BatchLoader``, batch 64, no augmentation;
3. ``BatchLoader`` with the default affine augmentation (rotation, scale, translation) at a
   training batch size (256), three ways: mnistlab's ``Augment``; the straightforward
   ``F.affine_grid`` + ``F.grid_sample``; a hand-written bilinear gather (4 ``gather`` + 3
   ``lerp`` on a zero-padded flattened image), which was evaluated and lost.

Needs the full MNIST files under $MNISTLAB_DATA_DIR; without it, runs on mnist-5k (the
figures are then not comparable). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from mnistlab.augment import Augment, AugmentConfig
from mnistlab.data import load
from mnistlab.loader import BatchLoader


class ExampleDataset(torch.utils.data.Dataset):
    """The official example's pattern: one sample at a time, converted and normalized."""

    def __init__(self, images, labels, mean: float, std: float):
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.images[i]).float().div(255).sub(self.mean).div(self.std)
        return x[None], int(self.labels[i])


class RandomAffine:
    """Per-sample random affine the straightforward way: theta in torch, affine_grid,
    grid_sample (for comparison; the same parameter ranges as AugmentConfig())."""

    def __init__(self, cfg: AugmentConfig, seed: int = 0, warp: str = "grid_sample"):
        self.cfg, self.warp = cfg, warp
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        u = torch.rand(b, 4, generator=self.g) * 2 - 1
        angle = torch.deg2rad(u[:, 0] * self.cfg.rotate)
        lo, hi = self.cfg.scale
        scale = lo + (u[:, 1] + 1) * (hi - lo) / 2
        shift = u[:, 2:] * self.cfg.translate * 2 / torch.tensor([w, h])  # normalized units
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack(
            [torch.stack([cos, -sin, -shift[:, 0]], 1), torch.stack([sin, cos, -shift[:, 1]], 1)], 1
        )
        if self.warp == "gather":
            return gather_warp(x, theta)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gather_warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear warp (zero padding) by explicit gathers on a padded, flattened image."""
    b, c, h, w = x.shape
    assert c == 1 and h == w  # enough for this comparison
    src = F.pad(x[:, 0], (1, 2, 1, 2)).reshape(b, -1)  # pads of zeros absorb clamped indices
    wp = w + 3
    pix = torch.arange(w, dtype=x.dtype)
    # normalized-coordinate theta -> pixel map (square image): p = A (q - c) + c + A' t
    lin, t = theta[:, :, :2], theta[:, :, 2] * (w / 2)
    ctr = (w - 1) / 2
    u = lin[:, 0, 0, None, None] * (pix - ctr) + lin[:, 0, 1, None, None] * (pix - ctr)[:, None]
    v = lin[:, 1, 0, None, None] * (pix - ctr) + lin[:, 1, 1, None, None] * (pix - ctr)[:, None]
    u = (u + (t[:, 0] + ctr)[:, None, None]).clamp_(-1, w).reshape(b, -1)
    v = (v + (t[:, 1] + ctr)[:, None, None]).clamp_(-1, h).reshape(b, -1)
    u0, v0 = u.floor(), v.floor()
    fx, fy = u - u0, v - v0
    idx = (v0 * wp + u0).long() + (wp + 1)
    top = torch.lerp(src.gather(1, idx), src.gather(1, idx + 1), fx)
    bot = torch.lerp(src.gather(1, idx + wp), src.gather(1, idx + wp + 1), fx)
    return torch.lerp(top, bot, fy).view(b, 1, h, w)


def epoch_rate(batches) -> float:
    t0, n = time.perf_counter(), 0
    for _x, y in batches:
        n += len(y)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=256, help="batch size for the augmented rows")
    ap.add_argument("--ref-samples", type=int, default=20_000, help="samples per reference run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if os.environ.get("MNISTLAB_DATA_DIR"):
        ds = load("mnist", "train", download=False)
    else:
        print("MNISTLAB_DATA_DIR is not set: using mnist-5k; figures are not comparable")
        ds = load("mnist-5k", "train")
    n = len(ds.images)
    print(f"{ds.name}/{ds.split}: {n} images, torch {torch.__version__}, {args.threads} threads")
    load_avg = os.getloadavg()[0]
    print(f"load average before: {load_avg:.2f} on {os.cpu_count()} CPUs")
    if args.threads > 1 and load_avg > 0.5:
        print("warning: other processes are using the CPUs; with more than one torch thread")
        print("  every op that wakes torch's thread pool may wait for a core, and figures can")
        print("  be 10-100x low. Rerun when the machine is quiet, or compare with --threads 1.")

    ref_ds = ExampleDataset(ds.images, ds.labels, ds.mean, ds.std)
    ref_idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: args.ref_samples]
    ref = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ref_ds, ref_idx.tolist()), batch_size=64, shuffle=True
    )
    cfg = AugmentConfig()
    kw = dict(mean=ds.mean, std=ds.std)
    b = args.batch
    rows = {  # name: (batch size, iterable over one epoch)
        "reference DataLoader (official example)": (64, ref),
        "BatchLoader, no augmentation": (
            64,
            BatchLoader(ds.images, ds.labels, batch_size=64, **kw),
        ),
        "BatchLoader + Augment (mnistlab)": (
            b,
            BatchLoader(ds.images, ds.labels, batch_size=b, augment=Augment(cfg), **kw),
        ),
        "BatchLoader + affine_grid/grid_sample": (
            b,
            BatchLoader(ds.images, ds.labels, batch_size=b, augment=RandomAffine(cfg), **kw),
        ),
        "BatchLoader + hand-written gather": (
            b,
            BatchLoader(
                ds.images, ds.labels, batch_size=b, augment=RandomAffine(cfg, warp="gather"), **kw
            ),
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in rows}
    for _bs, batches in rows.values():  # warm-up
        epoch_rate(batches)
    for _ in range(args.repeats):  # interleaved, so that outside load hits every row alike
        for name, (_bs, batches) in rows.items():
            rates[name].append(epoch_rate(batches))
    print(f"load average after: {os.getloadavg()[0]:.2f}")

    med = {name: statistics.median(r) for name, r in rates.items()}
    ref_rate = med["reference DataLoader (official example)"]
    print(f"\n{'method':42s} {'batch':>5s} {'images/s':>11s} {'min..max':>21s} {'x ref':>7s}")
    for name, (bs, _batches) in rows.items():
        lo, hi = min(rates[name]), max(rates[name])
        print(
            f"{name:42s} {bs:5d} {med[name]:11,.0f} {lo:10,.0f}..{hi:<10,.0f} "
            f"{med[name] / ref_rate:7.1f}"
        )
    plain = med["BatchLoader + affine_grid/grid_sample"]
    aug = med["BatchLoader + Augment (mnistlab)"]
    print(f"\nAugment vs affine_grid/grid_sample: {aug / plain:.2f}x at batch {b}")
    result = {
        "reference_images_per_s": round(ref_rate),
        "loader_images_per_s": round(med["BatchLoader, no augmentation"]),
        "speedup": round(med["BatchLoader, no augmentation"] / ref_rate, 1),
        "augment_images_per_s": round(aug),
        "augment_batch_size": b,
        "affine_grid_sample_images_per_s": round(plain),
        "threads": args.threads,
        "repeats": args.repeats,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
