"""Optimizers of the NumPy engine: SGD (plain, momentum, Nesterov), Adam, RMSprop.

Each `step()` reads `param.grad` (overwritten by every backward pass, so there is no
zero_grad) and sets `param.value` to the updated weights. Conventions follow PyTorch's, so
a step here matches `torch.optim` given the same gradient.

Each optimizer is two small functions: `_coefficients()`, the scalars of this step, and
`_kernel(coef, p, g, *state, tmp, new)`, the element-wise update, written as ufuncs into
arrays the optimizer owns (one pass per operation, nothing allocated). For Adam on a
784x256 layer that update costs as much as a forward matmul, so it is worth the care.

Double buffering: the kernel writes the new weights into `new`, a second buffer, and
`step()` swaps it with `param.value`, the old weights becoming the next step's scratch.
Updating in place measured ~100 us slower per step on 2 cores (a whole step is ~1.1 ms):
the forward matmul has just read the weights on the other core's BLAS thread, and each
write to a cache line that another core holds must first invalidate its copy. Writing into
a buffer last read a step earlier does not pay that. This is why layers read their
weights through their Param (`param.value`) and nobody should keep the array itself.
(Cutting the large arrays in halves updated by two threads was tried, and measured no faster
on 2 cores: thread hand-offs and the GIL cost what the second core saved. What did pay is
two processes that each own and update half of the first layer's rows: `view()` and
parallel.py.)
"""

from __future__ import annotations

import copy
import math

import numpy as np

from .layers import Param

__all__ = ["Optimizer", "SGD", "Adam", "RMSprop", "make_optimizer"]

# Trap: a moving average of a gradient that has become 0 (a pixel that is blank in the
# recent batches) decays geometrically into the subnormal range, where x86 arithmetic is
# ~100x slower. Every FLUSH_EVERY steps, buffer entries below 2**32 * tiny are set to 0;
# with a decay >= 0.71 (0.71**64 > 2**-32) no entry goes subnormal in between.
FLUSH_EVERY = 64


class Optimizer:
    """Keeps the per-parameter state in `self.state[slot][i]` (same shape as param i)."""

    slots: tuple[str, ...] = ()  # names of the state arrays per parameter
    double_buffer = True  # False: update the values in place (see view())

    def __init__(self, params: list[Param], lr: float) -> None:
        if lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        self.params = list(params)
        self.base_lr = float(lr)  # as constructed; schedules scale it
        self.lr = float(lr)  # the rate of the next step
        self.t = 0  # steps taken
        self.state = {s: [np.zeros_like(p.value) for p in self.params] for s in self.slots}
        # the second buffer of each parameter: scratch, then the new value (not state)
        self._spare = [np.empty_like(p.value) for p in self.params]

    def step(self) -> None:
        self.t += 1
        coef = self._coefficients()
        for i, p in enumerate(self.params):
            state = [self.state[s][i] for s in self.slots]
            tmp = self._spare[i]
            new = tmp if self.double_buffer else p.value
            self._kernel(coef, p.value, p.grad, *state, tmp, new)
            if self.double_buffer:
                self._spare[i], p.value = p.value, tmp  # swap: see "Double buffering" above
        if self.t % FLUSH_EVERY == 0:
            for bufs in self.state.values():
                for buf in bufs:
                    np.copyto(buf, 0, where=np.abs(buf) < np.finfo(buf.dtype).tiny * 2**32)

    def _coefficients(self) -> tuple:
        """The scalars of this step (learning rate, bias corrections)."""
        raise NotImplementedError

    def _kernel(self, coef: tuple, p: np.ndarray, g: np.ndarray, *state_tmp_new) -> None:
        """From the gradient `g`, update the state arrays in place and write the updated
        `p` into `new` (the last array: the scratch `tmp`, or `p` itself). `g` is not
        modified."""
        raise NotImplementedError

    def view(self, parts: list[tuple[int, slice]]) -> Optimizer:
        """An optimizer over parts of this one's parameters, given as (index, rows) pairs,
        sharing this one's arrays: stepping it updates those rows of the values and the
        state here. It updates in place (no swap, which would move only its rows), so the
        processes of the two-process mode (parallel.py) can each update the rows they own.
        Its step count and learning rate start as this one's; copy them back after."""
        sub = copy.copy(self)
        sub.double_buffer = False
        sub.params = [
            Param(self.params[i].name, self.params[i].value[r], self.params[i].grad[r],
                  decay=self.params[i].decay)
            for i, r in parts
        ]  # fmt: skip
        sub.state = {s: [self.state[s][i][r] for i, r in parts] for s in self.slots}
        sub._spare = [self._spare[i][r] for i, r in parts]
        return sub

    def zero_grad(self) -> None:
        """Not needed (each backward overwrites the gradients); kept for familiarity."""
        for p in self.params:
            p.grad.fill(0)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays only (savable with np.savez): step count, lr and each state buffer."""
        d = {"t": np.array(self.t), "lr": np.array(self.lr), "base_lr": np.array(self.base_lr)}
        for slot, bufs in self.state.items():
            for p, buf in zip(self.params, bufs):
                d[f"{slot}.{p.name}"] = buf.copy()
        return d

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        # .item(): a scalar may come back 0-d or with shape (1,) (safetensors stores (1,))
        self.t = int(np.asarray(d["t"]).item())
        self.lr = float(np.asarray(d["lr"]).item())
        self.base_lr = float(np.asarray(d.get("base_lr", d["lr"])).item())
        for slot, bufs in self.state.items():
            for p, buf in zip(self.params, bufs):
                key = f"{slot}.{p.name}"
                if key not in d:
                    raise KeyError(f"optimizer state lacks {key!r}")
                if d[key].shape != buf.shape:
                    raise ValueError(f"{key}: expected shape {buf.shape}, found {d[key].shape}")
                np.copyto(buf, d[key], casting="same_kind")


class SGD(Optimizer):
    """p -= lr * g; with momentum mu: v = mu v + g, p -= lr * v;
    Nesterov: p -= lr * (g + mu v) (the gradient taken a step ahead, as in PyTorch)."""

    def __init__(
        self,
        params,
        lr: float,
        *,
        momentum: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = nesterov
        self.slots = ("velocity",) if self.momentum else ()
        super().__init__(params, lr)

    def _coefficients(self) -> tuple:
        return (self.lr, self.momentum)

    def _kernel(self, coef, p, g, *state_tmp_new) -> None:
        lr, mu = coef
        *velocity, tmp, new = state_tmp_new
        direction = g
        if velocity:
            (v,) = velocity
            v *= mu
            v += g  # v = mu v + g
            direction = v
            if self.nesterov:
                np.multiply(v, mu, out=tmp)
                tmp += g  # g + mu v
                direction = tmp
        np.multiply(direction, lr, out=tmp)
        np.subtract(p, tmp, out=new)  # p - lr * direction


class Adam(Optimizer):
    """m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p -= lr * m_hat / (sqrt(v_hat) + eps), with m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t).

    Done with two passes fewer per step, exactly the same update: the state holds decayed
    *sums* M = b1 M + g and S = b2 S + g^2 (so m = (1 - b1) M, v = (1 - b2) S), and the
    constant factors and bias corrections fold into two scalars:
        m_hat = c1 M, sqrt(v_hat) = c2 sqrt(S), c1 = (1 - b1) / (1 - b1^t),
        c2 = sqrt((1 - b2) / (1 - b2^t)),  so  p -= (lr c1 / c2) * M / (sqrt(S) + eps / c2).
    The state arrays are M and S, named "m_sum" and "v_sum" (PyTorch's exp_avg is
    (1 - b1) M, its exp_avg_sq (1 - b2) S); saving them as they are makes a resume exact.
    """

    slots = ("m_sum", "v_sum")

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"Adam betas must be in [0, 1), got {betas}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        super().__init__(params, lr)

    def _coefficients(self) -> tuple:
        b1, b2 = self.betas
        c1 = (1.0 - b1) / (1.0 - b1**self.t)
        c2 = math.sqrt((1.0 - b2) / (1.0 - b2**self.t))
        return (b1, b2, self.lr * c1 / c2, self.eps / c2)

    def _kernel(self, coef, p, g, M, S, tmp, new) -> None:
        b1, b2, step_size, eps = coef
        M *= b1
        M += g  # M = b1 M + g
        S *= b2
        np.square(g, out=tmp)
        S += tmp  # S = b2 S + g^2
        np.sqrt(S, out=tmp)
        tmp += eps
        np.divide(M, tmp, out=tmp)  # M / (sqrt(S) + eps / c2)
        tmp *= step_size
        np.subtract(p, tmp, out=new)  # p - (lr c1 / c2) M / (sqrt(S) + eps / c2)


class RMSprop(Optimizer):
    """v = a v + (1 - a) g^2;  p -= lr * g / (sqrt(v) + eps)  (PyTorch's form, no bias
    correction, v starts at 0). With momentum mu, as PyTorch:
    buf = mu buf + g / (sqrt(v) + eps);  p -= lr * buf."""

    def __init__(self, params, lr: float = 1e-3, *, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0) -> None:  # fmt: skip
        if not 0 <= momentum < 1:
            raise ValueError(f"RMSprop momentum must be in [0, 1), got {momentum}")
        self.alpha = float(alpha)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.slots = ("v", "buf") if self.momentum else ("v",)
        super().__init__(params, lr)

    def _coefficients(self) -> tuple:
        return (self.alpha, self.lr, self.eps, self.momentum)

    def _kernel(self, coef, p, g, v, *buf_tmp_new) -> None:
        a, lr, eps, mu = coef
        *buf, tmp, new = buf_tmp_new
        v *= a
        np.square(g, out=tmp)
        tmp *= 1.0 - a
        v += tmp  # v = a v + (1 - a) g^2
        np.sqrt(v, out=tmp)
        tmp += eps
        np.divide(g, tmp, out=tmp)  # g / (sqrt(v) + eps)
        if buf:
            (b,) = buf
            b *= mu
            b += tmp  # buf = mu buf + g / (sqrt(v) + eps)
            np.multiply(b, lr, out=tmp)
        else:
            tmp *= lr
        np.subtract(p, tmp, out=new)  # p - lr * (buf or g / (sqrt(v) + eps))


def make_optimizer(name: str, params: list[Param], lr: float, **kw) -> Optimizer:
    """`name`: "sgd", "momentum" (SGD, momentum 0.9 unless given), "nesterov", "adam",
    "rmsprop". Extra keywords go to the optimizer (betas, eps, alpha, momentum)."""
    key = name.lower()
    if key == "sgd":
        return SGD(params, lr, **kw)
    if key == "momentum":
        return SGD(params, lr, **{"momentum": 0.9, **kw})
    if key == "nesterov":
        return SGD(params, lr, **{"momentum": 0.9, "nesterov": True, **kw})
    if key == "adam":
        return Adam(params, lr, **kw)
    if key == "rmsprop":
        return RMSprop(params, lr, **kw)
    raise ValueError(
        f"unknown optimizer {name!r}; expected sgd, momentum, nesterov, adam or rmsprop"
    )
