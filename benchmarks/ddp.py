"""Data-parallel training on one machine: N processes (``--nproc N``) against one process.

Trains the same recipe twice through mnistlab.training.train, side by side in one run:

1. one process with all the threads (``--threads T``),
2. one process with T/N threads (what each rank gets),
3. ``--nproc N`` processes with T/N threads each (the same global batch: each rank takes
   batch_size/N images per step, batch norm synchronized over the ranks),

and prints each one's training time (the loop's own, from run.json: validation and
checkpoints excluded), images per second, the speed-up, and the final validation accuracy
of both (the same within float rounding: tests/test_distributed.py). The last line is one
JSON object. Timings on a shared machine are inflated and noisy; the load average is printed
with them.

What to expect: on CPU cores that one process already keeps busy (torch's intra-op threads
on every core) a second process adds the gradient all-reduce and two all-reduces per
batch-norm layer per step and has half the batch per step to vectorize over, so on 2 cores
it is not faster; data parallelism pays where each rank brings its own device (one GPU per
rank, NCCL) or machine (``torchrun --nnodes``).

    python benchmarks/ddp.py                                   # quick on full MNIST, 2 epochs
    python benchmarks/ddp.py --dataset mnist-5k --epochs 1     # a small check (~1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from mnistlab.config import build_config
from mnistlab.training import train


def load_avg() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="quick")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads of the one process; each of the N processes gets T/N")
    args = ap.parse_args()
    per_rank = max(1, args.threads // args.nproc)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, nproc, threads in (("one", 1, args.threads), ("one_thin", 1, per_rank),
                                    ("many", args.nproc, per_rank)):
            label = f"{nproc} process(es), {threads} thread(s) each"
            print(f"load average before {label}: {load_avg()}", flush=True)
            cfg = build_config(args.recipe, {
                "dataset": args.dataset, "epochs": args.epochs, "nproc": nproc,
                "threads": threads, "progress": False, "eval_test": False, "runs_dir": tmp,
                "name": key})
            run = train(cfg, log=lambda *_: None)
            info = json.loads((run / "run.json").read_text())
            records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            epochs = [r for r in records if r["type"] == "epoch"]
            images = sum(e["images_per_s"] * e["seconds"] for e in epochs)
            results[key] = {"seconds": info["train_seconds"], "threads_per_process": threads,
                            "images_per_s": images / info["train_seconds"],
                            "val_acc": epochs[-1]["val_acc"]}
            print(f"{label}: {info['train_seconds']:.2f} s training, "
                  f"{results[key]['images_per_s']:,.0f} images/s, validation accuracy "
                  f"{100 * epochs[-1]['val_acc']:.2f}%", flush=True)
    speedup = results["one"]["seconds"] / results["many"]["seconds"]
    print(f"{args.nproc} processes vs one process with {args.threads} threads: {speedup:.2f}x; "
          f"vs one with {per_rank}: "
          f"{results['one_thin']['seconds'] / results['many']['seconds']:.2f}x  "
          f"(load average after: {load_avg()})")
    print(json.dumps({"recipe": args.recipe, "dataset": args.dataset, "epochs": args.epochs,
                      "cores": os.cpu_count(), "nproc": args.nproc, **results,
                      "speedup": round(speedup, 3),
                      "load_avg": [round(v, 2) for v in os.getloadavg()]}))


if __name__ == "__main__":
    main()
