"""Question 2: the training steps. Preprocessing (standardization vs scaling to 0..1),
choices made on the validation split, and one final test.

    python examples/lessons/q2_training_steps.py     # full MNIST

Part 1, preprocessing. The same MLP (784-256-10) trains for 2 epochs on pixels given three
ways: raw 0..255, scaled to 0..1 (归一化, what the TensorFlow tutorials feed), and
standardized with the training set's mean and standard deviation (标准化, what mnistlab does:
(x/255 - 0.1307) / 0.3081). Each scaling gets SGD with momentum at four learning rates and
Adam at its usual 1e-3; the table gives validation accuracy. `mnistlab train` always
standardizes, so this part is a short loop of its own over mnistlab's data, loader and model.

Part 2, the steps with mnistlab's commands: build (``mnistlab summary lenet5``), train four
learning rates, compare them on validation, and evaluate only the chosen run on the test
split, once.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command, default_runs_dir, pct, run, table  # noqa: E402

# ---------------------------------------------------------------------- 1. preprocessing


def scalings(mean: float, std: float) -> dict[str, tuple[float, float]]:
    """name -> (mean, std) for the loader, which computes (pixel/255 - mean) / std."""
    return {"raw 0..255": (0.0, 1 / 255), "0..1": (0.0, 1.0), "standardized": (mean, std)}


OPTIMIZERS = [("sgd", lr) for lr in (0.01, 0.03, 0.1, 0.3)] + [("adam", 1e-3)]


def fit(train, val, *, mean: float, std: float, optimizer: str, lr: float, epochs: int = 2,
        batch_size: int = 128, hidden: int = 256, seed: int = 0) -> dict:
    """Train an MLP on inputs normalized as (pixel/255 - mean) / std; validation accuracy
    after the last epoch (or 'diverged' when the loss stops being finite)."""
    import torch
    import torch.nn.functional as F

    from mnistlab.engines.torch_engine import evaluate_loader
    from mnistlab.loader import BatchLoader
    from mnistlab.models import create_model

    torch.manual_seed(seed)
    model = create_model("mlp", hidden=[hidden])
    train_loader = BatchLoader(train.images, train.labels, batch_size=batch_size, mean=mean,
                               std=std, seed=seed)
    val_loader = BatchLoader(val.images, val.labels, batch_size=1000, mean=mean, std=std,
                             shuffle=False)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train()
        for x, y in train_loader:
            loss = F.cross_entropy(model(x), y)
            if not math.isfinite(loss.item()):
                return {"val_acc": None, "diverged": True}
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {"val_acc": evaluate_loader(model, val_loader)["acc"], "diverged": False}


def preprocessing(dataset: str, *, epochs: int = 2, optimizers=OPTIMIZERS) -> list[dict]:
    from mnistlab.data import load

    train, val = load(dataset, "train"), load(dataset, "val")
    rows = []
    for name, (mean, std) in scalings(train.mean, train.std).items():
        for opt, lr in optimizers:
            r = fit(train, val, mean=mean, std=std, optimizer=opt, lr=lr, epochs=epochs)
            rows.append({"scaling": name, "optimizer": opt, "lr": lr, **r})
    return rows


def format_preprocessing(rows: list[dict]) -> str:
    names = list(dict.fromkeys(r["scaling"] for r in rows))
    settings = list(dict.fromkeys((r["optimizer"], r["lr"]) for r in rows))
    cell = {(r["scaling"], r["optimizer"], r["lr"]): r for r in rows}

    def show(r: dict) -> str:
        return "diverged" if r["diverged"] else pct(r["val_acc"])

    return table(["optimizer, lr"] + [f"{n} (val %)" for n in names],
                 [[f"{o} {lr:g}"] + [show(cell[(n, o, lr)]) for n in names]
                  for o, lr in settings])


# --------------------------------------------------------- 2. choose on val, test once

CANDIDATES = [{"model": "lenet5", "epochs": 2, "batch_size": 128, "optimizer": "adam",
               "lr": lr, "schedule": "onecycle"} for lr in (1e-3, 3e-3, 1e-2, 3e-2)]


def choose_then_test(dataset: str, runs_dir: Path, candidates=CANDIDATES) -> dict:
    """Train every candidate without touching the test split, pick the best validation
    accuracy, and evaluate that one run on the test split."""
    from mnistlab.evaluate import evaluate

    tried = []
    for i, c in enumerate(candidates):
        over = {"dataset": dataset, **c, "eval_test": False}
        r = run(over, runs_dir, f"choose-{i}")
        tried.append({"command": command(over), "run_dir": r["run_dir"],
                      "val": r["val"]["accuracy"], "lr": c["lr"]})
    best = max(tried, key=lambda t: t["val"])
    test = evaluate(best["run_dir"], "test").metrics["accuracy"]  # the one look at test
    return {"tried": tried, "chosen": best, "test": test}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs-dir", type=Path, default=default_runs_dir("q2"))
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # as the `mnistlab train` runs below (--threads 1)
    print(format_preprocessing(preprocessing("mnist")))
    c = choose_then_test("mnist", a.runs_dir)
    print("\n" + table(["command", "val %"], [[f"`{t['command']}`", pct(t["val"])]
                                              for t in c["tried"]]))
    print(f"\nchosen on validation: lr {c['chosen']['lr']:g} ({c['chosen']['run_dir']}); "
          f"test accuracy, evaluated once: {pct(c['test'])}%")
    print(f"mnistlab eval {c['chosen']['run_dir']} --split test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
