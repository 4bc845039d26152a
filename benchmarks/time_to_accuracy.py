"""Time to 99% MNIST test accuracy: the `quick` recipe against the official PyTorch example.

Side by side in one process, on the same in-memory batches (mnistlab.loader.BatchLoader):

1. the machine's float32 matrix-multiply peak (median GFLOP/s of torch.mm, best size);
2. the reference: the official PyTorch MNIST example's recipe (model "pytorch-example",
   Adadelta lr 1.0, StepLR gamma 0.7 per epoch, batch 64), trained epoch by epoch until its
   test accuracy first reaches 99.0% (checked after each epoch, evaluation not timed), once
   per reference seed. Its time to 99% is the median number of epochs it needs over those
   seeds times the median time of one of its epochs: the epoch count of one seed sits on a
   knife's edge (99.02% or 98.93% after epoch 3 turns 3 epochs into 4, 33% more time) and a
   single epoch's time moves with the host, so neither is taken from one run alone;
3. the `quick` recipe, run through mnistlab.training.train exactly as `mnistlab train --config
   quick` runs it, once per seed; its time is the loop's own training time (metrics.jsonl,
   validation and checkpoints excluded) and its accuracy the test accuracy the run reports;
4. training FLOPs (torch.utils.flop_counter on one forward+backward step, times the images
   seen) and the achieved FLOP/s as a fraction of the measured matmul peak.

The last line printed is one JSON object with the results. Timings on a shared machine are
inflated and noisy; the load average is printed with them.

    python benchmarks/time_to_accuracy.py                 # the full comparison (~21 min on a slow host)
    python benchmarks/time_to_accuracy.py --quick-only --seeds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mnistlab import data
from mnistlab.config import build_config
from mnistlab.errors import ConfigError
from mnistlab.loader import BatchLoader, epoch_size
from mnistlab.models import create_model
from mnistlab.training import train

TARGET = 99.0  # test accuracy, percent


def load_avg() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


# ------------------------------------------------------------------------ matmul peak


def matmul_peak(sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 9) -> float:
    """float32 GFLOP/s of torch.mm: the median over repeats, the best over sizes."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        best = max(best, 2 * n**3 / statistics.median(times) / 1e9)
    return best


def train_flops_per_image(model: torch.nn.Module, batch_size: int = 64) -> float:
    """FLOPs of one forward+backward pass per image (a multiply-add counts 2)."""
    model.train()
    x = torch.randn(batch_size, 1, 28, 28)
    y = torch.zeros(batch_size, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch_size


# ---------------------------------------------------------------------- the reference


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: BatchLoader) -> float:
    model.eval()
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    model.train()
    return 100 * correct / len(loader.labels)


def reference_run(max_epochs: int, seed: int = 0) -> dict:
    """The official example's recipe until test accuracy >= TARGET; seconds exclude evaluation."""
    train_ds, test_ds = data.load("mnist", "train"), data.load("mnist", "test")
    loader = BatchLoader(train_ds.images, train_ds.labels, batch_size=64, mean=train_ds.mean,
                         std=train_ds.std, seed=seed)
    test = BatchLoader(test_ds.images, test_ds.labels, batch_size=1000, mean=train_ds.mean,
                       std=train_ds.std, shuffle=False)
    torch.manual_seed(seed)
    model = create_model("pytorch-example")
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    seconds, epochs, acc = 0.0, [], 0.0
    for epoch in range(1, max_epochs + 1):
        model.train()
        t0 = time.perf_counter()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)  # = nll_loss(log_softmax) of the example
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epoch_seconds = time.perf_counter() - t0
        seconds += epoch_seconds
        schedule.step()
        acc = accuracy(model, test)
        epochs.append({"epoch": epoch, "seconds": seconds, "epoch_seconds": epoch_seconds,
                       "test_acc": acc})
        print(f"  reference seed {seed} epoch {epoch}: test {acc:.2f}%  cumulative {seconds:.1f}s"
              f"  (load {load_avg()})", flush=True)
        if acc >= TARGET:
            break
    return {"seconds": seconds, "reached": acc >= TARGET, "epochs": epochs,
            "images": len(train_ds)}


def reference_time_to_target(max_epochs: int, seeds: list[int]) -> dict:
    """The reference once per seed: the median epochs it needs to reach TARGET times the
    median seconds of one epoch (every epoch of every seed)."""
    runs = [reference_run(max_epochs, seed) for seed in seeds]
    needed = [len(r["epochs"]) for r in runs]
    epochs = statistics.median(needed)
    epoch_seconds = statistics.median(e["epoch_seconds"] for r in runs for e in r["epochs"])
    flops = train_flops_per_image(create_model("pytorch-example")) * runs[0]["images"] * epochs
    return {"seconds": epochs * epoch_seconds, "epochs": epochs, "epoch_seconds": epoch_seconds,
            "epochs_by_seed": needed, "reached": all(r["reached"] for r in runs),
            "seconds_by_seed": [round(r["seconds"], 1) for r in runs], "flops": flops}


# ------------------------------------------------------------------ the quick recipe


def quick_runs(seeds: list[int], runs_dir: Path, threads: int, recipe: str = "quick") -> dict:
    """Train the `quick` recipe (or another) once per seed through mnistlab.training; times
    and test accuracy."""
    seconds, accs = [], []
    for seed in seeds:
        overrides = {"seed": seed, "runs_dir": str(runs_dir), "name": f"quick-seed{seed}",
                     "progress": False, "eval_test": True}
        if threads:
            overrides["threads"] = threads
        cfg = build_config(recipe, overrides)
        run_dir = train(cfg, log=lambda _msg: None)
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        seconds.append(sum(r["seconds"] for r in records if r["type"] == "epoch"))
        accs.append(100 * json.loads((run_dir / "eval_test.json").read_text())["accuracy"])
        print(f"  quick seed {seed}: test {accs[-1]:.2f}%  train {seconds[-1]:.2f}s  "
              f"(load {load_avg()})", flush=True)
    n_train = len(data.load("mnist", "train", seed=cfg.seed))
    model = create_model(cfg.model, **cfg.model_args)
    images = epoch_size(n_train, cfg.epoch_fraction) * cfg.epochs  # what the loop trains on
    flops = train_flops_per_image(model) * images
    return {"seconds": seconds, "accs": accs, "flops": flops, "config": cfg}


# ------------------------------------------------------------------------------ main


def positive(text: str) -> int:
    """argparse type: an integer >= 1 (else one line of usage error, no traceback)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=positive, default=5, help="quick-recipe seeds 0..N-1")
    ap.add_argument("--quick-only", action="store_true", help="skip the reference")
    ap.add_argument("--max-epochs", type=positive, default=8, help="cap on the reference's epochs")
    ap.add_argument("--reference-seeds", type=positive, default=3,
                    help="train the reference with seeds 0..N-1 (its epoch count is their median)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--recipe", default="quick",
                    help="time this recipe (a name or TOML file) instead of quick, e.g. a "
                         "candidate from `mnistlab tune` (studies/quick/)")
    args = ap.parse_args()
    if args.threads < 0:
        ap.error(f"--threads: expected 0 (torch's default) or more, got {args.threads}")
    try:  # a bad recipe is refused now, not after the reference's ~20 minutes
        build_config(args.recipe)
    except ConfigError as e:
        ap.error(f"--recipe: {e}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {load_avg()} (1/5/15 min)")

    peak = matmul_peak()
    print(f"float32 matmul peak: {peak:.1f} GFLOP/s (median torch.mm, best size)")

    ref = None
    if not args.quick_only:
        print(f"reference (pytorch-example, Adadelta 1.0, StepLR 0.7, batch 64) to {TARGET}%:")
        ref = reference_time_to_target(args.max_epochs, list(range(args.reference_seeds)))
        if not ref["reached"]:
            print(f"  a seed did not reach {TARGET}% in {args.max_epochs} epochs; its time is a "
                  "lower bound")

    print(f"quick recipe, {args.seeds} seeds:")
    with tempfile.TemporaryDirectory() as tmp:
        quick = quick_runs(list(range(args.seeds)), Path(tmp), args.threads, args.recipe)
    q_seconds = statistics.median(quick["seconds"])
    q_mean = statistics.fmean(quick["accs"])
    q_spread = statistics.pstdev(quick["accs"])
    fraction = quick["flops"] / q_seconds / (peak * 1e9)

    print(f"quick: median {q_seconds:.2f}s (times {[round(s, 2) for s in quick['seconds']]}), "
          f"test accuracy mean {q_mean:.2f}% +- {q_spread:.2f} "
          f"({[round(a, 2) for a in quick['accs']]})")
    print(f"quick: {quick['flops'] / 1e12:.3f} TFLOP of training, "
          f"{quick['flops'] / q_seconds / 1e9:.1f} GFLOP/s = {100 * fraction:.1f}% of peak")
    result = {
        "recipe": args.recipe,
        "reference_seconds_to_99": None,
        "quick_seconds": round(q_seconds, 3),
        "quick_accuracies": [round(a, 2) for a in quick["accs"]],
        "quick_mean_accuracy": round(q_mean, 3),
        "speedup": None,
        "flops_fraction_of_peak": round(fraction, 4),
    }
    if ref is not None:
        speedup = ref["seconds"] / q_seconds
        ref_fraction = ref["flops"] / ref["seconds"] / (peak * 1e9)
        print(f"reference: {ref['seconds']:.1f}s to {TARGET}% = {ref['epochs']:g} epochs (median "
              f"of seeds: {ref['epochs_by_seed']}) x {ref['epoch_seconds']:.1f}s (median epoch); "
              f"each seed's own time {ref['seconds_by_seed']} s; "
              f"{ref['flops'] / 1e12:.2f} TFLOP, {100 * ref_fraction:.1f}% of peak")
        print(f"speedup: {speedup:.1f}x ({ref['seconds']:.1f}s / {q_seconds:.2f}s)")
        result.update(reference_seconds_to_99=round(ref["seconds"], 2),
                      speedup=round(speedup, 2), reference_reached=ref["reached"],
                      reference_epochs=ref["epochs"], reference_epochs_by_seed=ref["epochs_by_seed"],
                      reference_seconds_per_epoch=round(ref["epoch_seconds"], 2))
    result.update(peak_gflops=round(peak, 1), threads=torch.get_num_threads(),
                  load_avg=[round(v, 2) for v in os.getloadavg()])
    print(f"load average at the end: {load_avg()}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
