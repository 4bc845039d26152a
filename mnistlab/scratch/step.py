"""One training step of the NumPy engine, and what a step needs: the batch order of an
epoch, gathering a batch, and the L1/L2 penalties. Shared by `fit` (train.py) and the
two-process mode (parallel.py).
"""

from __future__ import annotations

import numpy as np

from .losses import SoftmaxCrossEntropy

__all__ = ["Step", "Gather", "Penalties", "batch_order"]


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The index batches of one epoch: a permutation of range(n) that depends only on
    (seed, epoch), cut into `batch_size` pieces (the last may be shorter)."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


class Gather:
    """Gathers rows `idx` of `x` (N, D) into a reused (B, D) float buffer: the batch.

    With `norm=(scale, shift)`, `x` holds raw uint8 pixels and each batch is converted to
    scale * x + shift on the way (gathering bytes moves 4x less memory than floats).
    """

    def __init__(self, x: np.ndarray, batch_size: int, dtype, norm: tuple[float, float] | None):
        self.x, self.norm = x, norm
        shape = (min(batch_size, len(x)), x.shape[1])
        self.out = np.empty(shape, dtype=dtype)  # the batch, reused
        self.raw = None if norm is None else np.empty(shape, dtype=x.dtype)  # raw uint8 batch

    def __call__(self, idx: np.ndarray) -> np.ndarray:  # -> (B, D)
        # mode="clip" skips the bounds check that makes np.take buffer its output
        # (the indices are a permutation)
        out = self.out[: len(idx)]
        if self.norm is None:
            return np.take(self.x, idx, axis=0, out=out, mode="clip")
        scale, shift = self.norm  # one pass to float (and one more if shift != 0)
        u = np.take(self.x, idx, axis=0, out=self.raw[: len(idx)], mode="clip")
        np.multiply(u, scale, out=out, dtype=out.dtype)
        if shift:
            out += shift
        return out


class Step:
    """One training step in this process: gather, forward, loss, backward, L1/L2, update."""

    def __init__(self, model, opt, x_train, batch_size, norm, l1: float, l2: float,
                 smoothing: float) -> None:  # fmt: skip
        self.model, self.opt = model, opt
        self.gather = Gather(x_train, batch_size, model.dtype, norm)
        self.loss_fn = SoftmaxCrossEntropy(smoothing)
        self.penalties = Penalties(opt.params, l1, l2)

    def __call__(self, idx: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, np.ndarray]:
        x = self.gather(idx)  # (B, 784)
        # forward: logits and the loss
        self.loss_fn(self.model.forward(x), y)
        # backward: every parameter's gradient, overwritten in place
        self.model.backward(self.loss_fn.backward())
        self.penalties()
        # update
        self.opt.lr = lr
        self.opt.step()
        # the plain cross-entropy (without smoothing's term) and the predicted classes (B,)
        return self.loss_fn.nll, self.loss_fn.pred

    def begin_epoch(self, epoch: int) -> None:
        pass

    def end_epoch(self) -> None:
        pass

    def close(self) -> None:
        pass


class Penalties:
    """L1 and L2 on the weights (`Param.decay`; not biases): add the gradients of
    l1 * |W| and 0.5 * l2 * |W|^2, that is l1 * sign(W) + l2 * W, to each dW."""

    def __init__(self, params, l1: float, l2: float) -> None:
        self.params = [p for p in params if p.decay] if (l1 or l2) else []
        self.l1, self.l2 = float(l1), float(l2)
        self.tmp = [np.empty_like(p.value) for p in self.params]

    def __call__(self) -> None:
        for p, t in zip(self.params, self.tmp):
            if self.l2:
                np.multiply(p.value, self.l2, out=t)
                p.grad += t
            if self.l1:
                np.sign(p.value, out=t)
                t *= self.l1
                p.grad += t
