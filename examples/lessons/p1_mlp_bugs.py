"""Coding problem 1: what each of the text's bugs costs, measured one at a time.

    python examples/lessons/p1_mlp_bugs.py                      # mnist-5k (offline, seconds)
    python examples/lessons/p1_mlp_bugs.py --dataset mnist      # full MNIST

Starting from the corrected program (examples/seed_mlp_numpy.py), each variant puts back
one thing the text does and trains with the same data, seed and budget (5 epochs, batch 32,
learning rate 1.0, 64 hidden units):

* ``ascent``: the text's sign. Its error term is the *negative* gradient and it is then
  subtracted, so the weights climb the loss.
* ``randn init``: weights drawn with standard deviation 1 (``np.random.randn``), not
  sqrt(1 / fan_in).
* ``no biases``: the text's layers have none.
* ``sigmoid outputs``: the text's output layer, ten independent sigmoids; its error term
  ``output - y`` (sign fixed) is then the gradient of a per-class logistic loss, not of
  the softmax cross-entropy.
* ``derivative at the output``: the text's hidden error uses the sigmoid derivative of the
  *output*. That only runs when the hidden layer has as many units as the output (10), so
  it is compared with the corrected program at 10 hidden units.

The text's per-sample loop is a matter of speed, not of accuracy: see the guide.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, pct, table  # noqa: E402


def example():
    """examples/seed_mlp_numpy.py as a module."""
    spec = importlib.util.spec_from_file_location("seed_mlp_numpy",
                                                  REPO / "examples" / "seed_mlp_numpy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def train_variant(ex, data, bug: str, *, hidden: int = 64, epochs: int = 5,
                  batch_size: int = 32, lr: float = 1.0, seed: int = 0) -> dict:
    """Train the corrected network with one of the text's choices put back; returns the
    mean training loss of the first and last epoch and the validation accuracy."""
    (x, labels), (x_val, labels_val) = data
    y = np.eye(10)[labels]
    rng = np.random.default_rng(seed)
    weights, biases = ex.init_weights([784, hidden, 10], rng)
    if bug == "randn init":
        weights = [rng.standard_normal(w.shape) for w in weights]

    sig_out = bug == "sigmoid outputs"

    def forward(xb):
        h = ex.sigmoid(xb @ weights[0] + biases[0])
        z = h @ weights[1] + biases[1]
        return h, ex.sigmoid(z) if sig_out else ex.softmax(z)

    losses = []
    for _ in range(epochs):
        order, epoch_loss = rng.permutation(len(x)), []
        for idx in np.array_split(order, -(-len(x) // batch_size)):
            xb, yb = x[idx], y[idx]
            h, out = forward(xb)
            if sig_out:  # sum over classes of the logistic loss of each sigmoid output
                p = np.clip(out, 1e-12, 1 - 1e-12)
                epoch_loss.append(-(yb * np.log(p) + (1 - yb) * np.log(1 - p)).sum(1).mean())
            else:  # softmax cross-entropy
                epoch_loss.append(-np.log(out[yb.astype(bool)] + 1e-12).mean())
            d_out = (out - yb) / len(xb)  # the gradient of either loss w.r.t. the logits
            at = out if bug == "derivative at the output" else h  # the text: output
            d_h = (d_out @ weights[1].T) * ex.sigmoid_derivative(at)
            grads_w = [xb.T @ d_h, h.T @ d_out]
            grads_b = [d_h.sum(axis=0), d_out.sum(axis=0)]
            sign = -1.0 if bug == "ascent" else 1.0  # the text subtracts -gradient
            for i in range(2):
                weights[i] -= sign * lr * grads_w[i]
                if bug != "no biases":
                    biases[i] -= sign * lr * grads_b[i]
        losses.append(float(np.mean(epoch_loss)))
    with np.errstate(over="ignore"):
        acc = float((forward(x_val)[1].argmax(axis=1) == labels_val).mean())
    return {"bug": bug, "hidden": hidden, "first_loss": losses[0], "last_loss": losses[-1],
            "val_acc": acc}


# (variant, hidden units): the derivative bug only runs with as many hidden units as outputs
VARIANTS = [("none (corrected)", 64), ("ascent", 64), ("randn init", 64), ("no biases", 64),
            ("sigmoid outputs", 64), ("none (corrected)", 10),
            ("derivative at the output", 10)]


def measure(dataset: str = "mnist-5k", *, epochs: int = 5, variants=VARIANTS) -> list[dict]:
    ex = example()
    data = (ex.load(dataset, "train"), ex.load(dataset, "val"))
    return [train_variant(ex, data, bug, hidden=h, epochs=epochs) for bug, h in variants]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist-5k")
    ap.add_argument("--epochs", type=int, default=5)
    a = ap.parse_args(argv)
    rows = measure(a.dataset, epochs=a.epochs)
    print(table(["variant", "hidden units", "loss, epoch 1", f"loss, epoch {a.epochs}",
                 "val accuracy %"],
                [[r["bug"], r["hidden"], f"{r['first_loss']:.4f}", f"{r['last_loss']:.4f}",
                  pct(r["val_acc"])] for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
