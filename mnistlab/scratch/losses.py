"""Softmax cross-entropy, fused and numerically stable.

For logits z (B, C) and integer labels y (B,), with p = softmax(z):

    loss = mean_n [ logsumexp(z_n) - z_n,y ]
    dloss/dz = (p - onehot(y)) / B

logsumexp is computed as m + log(sum exp(z - m)) with m = max(z): every exponent is <= 0,
so nothing overflows, and the largest term is exp(0) = 1, so the log never sees 0.
"""

from __future__ import annotations

import functools

import numpy as np

from .layers import reusable_buffer

__all__ = ["SoftmaxCrossEntropy", "log_softmax", "softmax"]


@functools.cache
def _exp_floor(dtype: np.dtype) -> float:
    """Trap: exp(-100) is a float32 subnormal, which x86 computes ~100x slower, and so is
    p / B when p is near the smallest normal. Clipping exponents at log(tiny) + 16 (-71 in
    float32) keeps both normal and changes no probability by more than 1e-30."""
    return float(np.log(np.finfo(dtype).tiny)) + 16


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, stable for any finite logits."""
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    """softmax over the last axis, stable for any finite logits."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class SoftmaxCrossEntropy:
    """`forward(logits, y) -> mean loss`, then `backward() -> dlogits (B, C)`.

    Fusing softmax with the loss gives the short gradient p - onehot(y) and avoids
    dividing by a probability that may be 0. No one-hot matrix is ever built: 1 is
    subtracted at the label's column. Its arrays are reused between calls. After forward,
    `pred` holds each row's predicted class (argmax of the logits) and `nll` the plain
    cross-entropy.

    Label smoothing `eps` trains toward the target (1 - eps) onehot(y) + eps / C: the loss
    becomes (1 - eps) CE + eps mean_c(logsumexp(z) - z_c), its gradient (p - target) / B.
    """

    def __init__(self, smoothing: float = 0.0) -> None:
        if not 0 <= smoothing < 1:
            raise ValueError(f"label smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = float(smoothing)

    def forward(self, logits: np.ndarray, y: np.ndarray) -> float:
        B, C = logits.shape
        rows = self._rows(B)
        # the row maximum through argmax (3x faster than max(axis=1) on 10 columns), which
        # also gives the predictions: `self.pred`, for the accuracy
        self.pred = np.argmax(logits, axis=1, out=self._buf("_pred", (B,), np.intp))
        z = self._buf("_z", (B, C), logits.dtype)
        np.subtract(logits, logits[rows, self.pred][:, None], out=z)  # (B, C), row max 0
        z_true = z[rows, y]  # (B,) shifted logit of each true class (a copy)
        z_mean = z.mean(axis=1) if self.smoothing else None  # (B,) before clipping
        np.maximum(z, _exp_floor(z.dtype), out=z)  # see _exp_floor
        p = np.exp(z, out=z)  # (B, C) in (0, 1]
        s = p.sum(axis=1, keepdims=True)  # (B, 1) in [1, C]
        p /= s  # softmax probabilities
        self.p, self.y = p, y
        lse = float(np.log(s).sum())  # sum over rows of logsumexp(shifted z)
        self.nll = (lse - float(z_true.sum())) / B  # z_true is unclipped
        if not self.smoothing:
            return self.nll
        eps = self.smoothing
        return (1 - eps) * self.nll + eps * (lse - float(z_mean.sum())) / B

    def backward(self) -> np.ndarray:  # -> dloss/dlogits (B, C)
        B = self.p.shape[0]
        d = self._buf("_d", self.p.shape, self.p.dtype)
        np.multiply(self.p, 1.0 / B, out=d)  # p / B
        eps = self.smoothing
        d[self._rows(B), self.y] -= (1.0 - eps) / B  # (p - (1 - eps) onehot) / B
        if eps:
            d -= eps / (d.shape[1] * B)  # ... - eps / C / B
        return d

    __call__ = forward

    def _buf(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        return reusable_buffer(self, name, shape, dtype)

    def _rows(self, B: int) -> np.ndarray:
        rows = self.__dict__.get("_arange")
        if rows is None or rows.shape[0] < B:
            rows = self._arange = np.arange(B)
        return rows[:B]
