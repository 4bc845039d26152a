"""Coding problem 2: the CNN layer by layer (as written, as intended, as `seed-cnn` builds
it), and what two of the text's choices cost when the program is otherwise fixed.

    python examples/lessons/p2_cnn_bugs.py --table            # the layer table (no training)
    python examples/lessons/p2_cnn_bugs.py --threads 1        # + 300 steps of each variant

The layer table is computed, not typed: shapes come from running the layers (PyTorch's
padding 0 is TensorFlow's "VALID", padding 2 its "SAME" for a 5x5 kernel), parameter
counts from the weight shapes the text declares, and the last column from mnistlab's
``seed-cnn``.

The variants train the corrected program (examples/seed_cnn_torch.py) with the text's
settings (Adam 1e-4, batch 100) for a shorter run, with one thing put back:

* ``std-1 init``: every weight and bias drawn from a normal distribution with standard
  deviation 1, as the text's ``tf.random_normal`` does (``--init normal1``);
* ``ReLU on the logits``: the text's ``fc`` applies ReLU to the output layer too.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, pct, table  # noqa: E402


def example():
    """examples/seed_cnn_torch.py as a module."""
    spec = importlib.util.spec_from_file_location("seed_cnn_torch",
                                                  REPO / "examples" / "seed_cnn_torch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- the table

# the text's declared weight shapes, TensorFlow layout (kh, kw, in, out) / (in, out)
DECLARED = {"conv1": (5, 5, 1, 32), "conv2": (5, 5, 32, 64), "fc1": (7 * 7 * 64, 1024),
            "fc2": (1024, 10)}


def shapes(padding: int, flatten: int | None) -> list[tuple[str, str]]:
    """(layer, output shape per image) running the text's layers with this padding;
    ``flatten``: the width the text reshapes to (None: whatever the tensor holds)."""
    import torch
    import torch.nn.functional as F

    x = torch.zeros(1, 1, 28, 28)
    out = []
    x = F.conv2d(x, torch.zeros(32, 1, 5, 5), padding=padding)
    out.append(("conv1 5x5, 32", x.shape))
    x = F.max_pool2d(x, 2)
    out.append(("pool1 2x2", x.shape))
    x = F.conv2d(x, torch.zeros(64, 32, 5, 5), padding=padding)
    out.append(("conv2 5x5, 64", x.shape))
    x = F.max_pool2d(x, 2)
    out.append(("pool2 2x2", x.shape))
    n = x[0].numel()
    rows = [(name, "x".join(str(d) for d in (s[2], s[3], s[1]))) for name, s in out]  # HxWxC
    want = flatten or n
    note = "" if want == n else f" per row from {n:,} per image: rows straddle images"
    rows.append(("flatten", f"{want:,}{note}"))
    ok = want == DECLARED["fc1"][0]
    rows.append(("fc1 1024", "1,024" if ok
                 else f"error: {want:,} inputs meet a {DECLARED['fc1'][0]:,}x1024 weight"))
    rows.append(("fc2 10", "10" if flatten is None else "None: `fc` has no `return`"))
    return rows


def layer_table() -> str:
    import math

    from mnistlab.models import create_model
    from mnistlab.summary import summarize

    written = shapes(padding=0, flatten=7 * 7 * 32)  # VALID, reshape to 7*7*32
    intended = shapes(padding=2, flatten=None)  # SAME, 7*7*64 read off the tensor
    params = {"conv1 5x5, 32": math.prod(DECLARED["conv1"]) + 32,
              "conv2 5x5, 64": math.prod(DECLARED["conv2"]) + 64,
              "fc1 1024": math.prod(DECLARED["fc1"]) + 1024,
              "fc2 10": math.prod(DECLARED["fc2"]) + 10}
    s = summarize(create_model("seed-cnn"))
    # seed-cnn's layers with weights, and its pools/flatten, in call order
    seed = [r for r in s["rows"] if r["type"] in ("Conv2d", "MaxPool2d", "Flatten", "Linear")]
    seed_cells = []
    for r in seed:
        o = r["output"][1:]
        shape = "x".join(str(d) for d in (o[1], o[2], o[0])) if len(o) == 3 else f"{o[0]:,}"
        seed_cells.append(f"{shape}" + (f" ({r['params']:,} params)" if r["params"] else ""))
    rows = []
    for i, ((name, w), (_, t)) in enumerate(zip(written, intended)):
        p = f"{params[name]:,}" if name in params else "-"
        rows.append([name, w, t, p, seed_cells[i]])
    total = sum(params.values())
    rows.append(["total", "does not run", "runs", f"{total:,}",
                 f"{s['params']:,} (+ dropout 0.5 before the head)"])
    return table(["layer", "as written (VALID, flatten 7*7*32)", "as intended (SAME)",
                  "parameters declared", "`seed-cnn` (output, parameters)"], rows)


# ----------------------------------------------------------------------------- variants


def relu_logits_net(ex):
    """The text's conv_net with its ReLU on the output layer put back."""
    import torch.nn.functional as F

    def net(x, weights, biases):
        x = x.reshape(-1, 1, 28, 28)
        pool1 = F.max_pool2d(ex.conv2d(x, weights["W_conv1"], biases["b_conv1"]), 2)
        pool2 = F.max_pool2d(ex.conv2d(pool1, weights["W_conv2"], biases["b_conv2"]), 2)
        fc1 = ex.fc(pool2.reshape(len(pool2), -1), weights["W_fc1"], biases["b_fc1"])
        return ex.fc(fc1, weights["W_fc2"], biases["b_fc2"], relu=True)  # the text's ReLU

    return net


def variants(dataset: str = "mnist", *, steps: int = 300, seed: int = 0) -> list[dict]:
    ex = example()
    quiet = lambda *_: None  # noqa: E731
    runs = [("corrected", {}),
            ("std-1 init", {"init": "normal1"}),
            ("ReLU on the logits", {"net": relu_logits_net(ex)})]
    return [{"variant": name, **ex.run(dataset, steps=steps, seed=seed, log=quiet, **kw)}
            for name, kw in runs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", action="store_true", help="only the layer table")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    print(layer_table())
    if a.table:
        return 0
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    rows = variants(a.dataset, steps=a.steps)
    print("\n" + table(["variant", f"val % after {a.steps} steps"],
                       [[r["variant"], pct(r["val_acc"])] for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
