"""Layers of the NumPy engine, each backward pass written next to its forward pass.

Shapes: B is the batch size, `i`/`o` a Linear layer's input and output widths.

Conventions (the traps are listed here once):
- `forward(x)` keeps what `backward` needs (a reference to `x`, a mask, the output).
  `backward(dy)` takes dL/d(output) and returns dL/d(input); a layer's parameter
  gradients are *overwritten* (not accumulated) by each backward, so no zero_grad.
- For speed, a layer writes its output and its input-gradient into buffers it owns and
  reuses on the next call: hold on to a layer's return value only until that layer runs
  again (copy it to keep it). `Sequential.forward` returns a fresh array, so users of a
  whole model never see this.
- The arrays a layer keeps from `forward` must not be modified before `backward`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "Module",
    "Param",
    "Linear",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "Dropout",
    "Sequential",
    "build_mlp",
    "init_weight",
]


class Param:
    """A trainable array and its gradient (same shape and dtype).

    Layers read their weights through their Param on every call, because an optimizer
    step *replaces* `value` with a new array (see optim.py: the update is written into a
    second buffer and the two are swapped). Keep the Param, not the array.
    """

    __slots__ = ("name", "value", "grad", "decay")

    def __init__(self, name: str, value: np.ndarray, grad: np.ndarray, *, decay: bool) -> None:
        self.name = name
        self.value = value
        self.grad = grad
        self.decay = decay  # True for weights: the L2 penalty applies; False for biases

    def __repr__(self) -> str:
        return f"Param({self.name!r}, shape={self.value.shape}, dtype={self.value.dtype})"


class Module:
    """Base class: a forward, a backward, named parameters and a train/eval flag."""

    training: bool = True

    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def params(self) -> list[Param]:
        return []

    def train(self, mode: bool = True) -> Module:
        self.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return reusable_buffer(self, name, shape, dtype)


def reusable_buffer(owner: object, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A reusable array of `shape` kept as `owner.<name>`: the first `B` rows of a buffer
    grown on demand (a larger batch reallocates it; a smaller one gets a view)."""
    buf = owner.__dict__.get(name)
    if buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != shape[1:] or buf.dtype != dtype:
        buf = np.empty(shape, dtype=dtype)
        setattr(owner, name, buf)
    return buf[: shape[0]]


# ---------------------------------------------------------------- initialization


def init_weight(
    fan_in: int, fan_out: int, init: str, rng: np.random.Generator, dtype=np.float32
) -> np.ndarray:
    """A (fan_in, fan_out) weight matrix.

    "he" (Kaiming normal, std sqrt(2 / fan_in)) keeps the activation variance constant
    through ReLU layers, which zero half their inputs; "xavier" (Glorot uniform, limit
    sqrt(6 / (fan_in + fan_out))) keeps it constant through tanh/sigmoid, which are
    roughly linear near 0 and see gradients flowing both ways.
    """
    if init == "he":
        w = rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)
    elif init == "xavier":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-limit, limit, size=(fan_in, fan_out))
    else:
        raise ValueError(f"unknown init {init!r}; expected 'he' or 'xavier'")
    return w.astype(dtype)


# ---------------------------------------------------------------- layers


class Linear(Module):
    """y = x @ W + b, with W stored (in, out) so the forward pass is one plain matmul.

    `input_grad=False` skips dL/dx: the first layer of a network has nothing upstream
    that learns, and that matmul would be a third of the whole backward pass.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        init: str = "he",
        rng: np.random.Generator | None = None,
        dtype=np.float32,
        input_grad: bool = True,
    ) -> None:
        rng = np.random.default_rng() if rng is None else rng
        W = init_weight(in_features, out_features, init, rng, dtype)  # (i, o)
        b = np.zeros(out_features, dtype=dtype)  # (o,)
        self.weight = Param("weight", W, np.zeros_like(W), decay=True)
        self.bias = Param("bias", b, np.zeros_like(b), decay=False)
        self.input_grad = input_grad
        self.x: np.ndarray | None = None

    # the arrays under their math names (read through the Params: see Param)
    W = property(lambda self: self.weight.value)
    b = property(lambda self: self.bias.value)
    dW = property(lambda self: self.weight.grad)
    db = property(lambda self: self.bias.grad)

    def forward(self, x: np.ndarray) -> np.ndarray:  # x (B, i) -> (B, o)
        self.x = x  # a reference, kept for dW
        W = self.W
        y = self._buffer("_y", (x.shape[0], W.shape[1]), W.dtype)
        np.matmul(x, W, out=y)  # (B, o) = (B, i) @ (i, o)
        y += self.b  # broadcast over the batch
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | None:  # dy (B, o) -> dx (B, i)
        # Each output y[n, k] = sum_j x[n, j] W[j, k] + b[k], so
        np.matmul(self.x.T, dy, out=self.dW)  # dW = x^T dy: (i, o) = (i, B) @ (B, o)
        np.sum(dy, axis=0, out=self.db)  # db = dy summed over the batch: (o,)
        if not self.input_grad:
            return None
        dx = self._buffer("_dx", self.x.shape, self.W.dtype)
        return np.matmul(dy, self.W.T, out=dx)  # dx = dy W^T: (B, i) = (B, o) @ (o, i)

    def params(self) -> list[Param]:
        return [self.weight, self.bias]

    def __repr__(self) -> str:
        return f"Linear({self.W.shape[0]}, {self.W.shape[1]})"


class ReLU(Module):
    """y = max(x, 0); the gradient passes where the output is positive."""

    def forward(self, x: np.ndarray) -> np.ndarray:  # (B, n) -> (B, n)
        self.y = self._buffer("_y", x.shape, x.dtype)
        return np.maximum(x, 0, out=self.y)

    def backward(self, dy: np.ndarray) -> np.ndarray:  # (B, n) -> (B, n)
        dx = self._buffer("_dx", dy.shape, dy.dtype)
        # dx = dy * 1[y > 0], in one pass (the bool mask casts to 0.0 / 1.0)
        return np.multiply(dy, self.y > 0, out=dx)

    def __repr__(self) -> str:
        return "ReLU()"


class Sigmoid(Module):
    """y = 1 / (1 + exp(-x)), computed as (1 + tanh(x / 2)) / 2, which never overflows."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = self._buffer("_y", x.shape, x.dtype)
        np.multiply(x, 0.5, out=y)
        np.tanh(y, out=y)
        y += 1
        y *= 0.5
        self.y = y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        # dy/dx = y (1 - y): the derivative is taken at *this* layer's output
        dx = self._buffer("_dx", dy.shape, dy.dtype)
        np.subtract(1, self.y, out=dx)
        dx *= self.y
        dx *= dy
        return dx

    def __repr__(self) -> str:
        return "Sigmoid()"


class Tanh(Module):
    """y = tanh(x); dy/dx = 1 - y^2."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.y = self._buffer("_y", x.shape, x.dtype)
        return np.tanh(x, out=self.y)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        dx = self._buffer("_dx", dy.shape, dy.dtype)
        np.square(self.y, out=dx)
        np.subtract(1, dx, out=dx)  # 1 - y^2
        dx *= dy
        return dx

    def __repr__(self) -> str:
        return "Tanh()"


class Dropout(Module):
    """Inverted dropout: in training, zero each input with probability p and scale the
    survivors by 1 / (1 - p), so evaluation (identity) needs no rescaling."""

    def __init__(self, p: float = 0.5, *, rng: np.random.Generator | None = None) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.rng = np.random.default_rng() if rng is None else rng

    def forward(self, x: np.ndarray) -> np.ndarray:  # (B, n) -> (B, n)
        if not self.training or self.p == 0.0:
            self.mask = None
            return x
        u = self._buffer("_u", x.shape, x.dtype)
        self.rng.random(out=u, dtype=u.dtype)  # uniform [0, 1)
        mask = self._buffer("_mask", x.shape, x.dtype)
        np.greater_equal(u, self.p, out=mask)  # 1.0 keeps, 0.0 drops
        mask *= 1.0 / (1.0 - self.p)
        self.mask = mask
        y = self._buffer("_y", x.shape, x.dtype)
        return np.multiply(x, mask, out=y)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self.mask is None:  # evaluation mode: the identity
            return dy
        dx = self._buffer("_dx", dy.shape, dy.dtype)
        return np.multiply(dy, self.mask, out=dx)  # the same mask, the same scale

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"


# ---------------------------------------------------------------- containers


class Sequential(Module):
    """Layers applied in order. Parameter names follow their layer's index, like
    `"0.weight"`, so a state dict reads the same as PyTorch's `nn.Sequential` (a layer's
    Params are renamed so when it joins: a layer belongs to one Sequential)."""

    def __init__(self, *layers: Module, config: dict | None = None) -> None:
        self.layers = list(layers)
        for i, layer in enumerate(self.layers):
            for p in layer.params():
                p.name = f"{i}.{p.name}"
        self.config = dict(config or {})  # the build_mlp arguments, to rebuild from a file
        ps = self.params()
        self.dtype = ps[0].value.dtype if ps else np.dtype(np.float32)

    def forward(self, x: np.ndarray) -> np.ndarray:  # (B, 784) -> logits (B, classes)
        x = np.asarray(x, dtype=self.dtype)  # no copy when it is already the model's dtype
        if x.ndim > 2:  # images (B, 28, 28) or (B, 1, 28, 28): flatten each one
            x = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            x = layer.forward(x)
        return x.copy()  # a fresh array: the last layer's buffer is reused next call

    def backward(self, dlogits: np.ndarray) -> np.ndarray | None:
        """Fills every parameter's gradient; returns dL/d(input) when the first layer
        computes it (`input_grad=True`), else None."""
        d = dlogits
        for layer in reversed(self.layers):
            d = layer.backward(d)
        return d

    def params(self) -> list[Param]:
        return [p for layer in self.layers for p in layer.params()]

    def train(self, mode: bool = True) -> Sequential:
        self.training = mode
        for layer in self.layers:
            layer.train(mode)
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, by name."""
        return {p.name: p.value.copy() for p in self.params()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy arrays into the existing parameters (so optimizers keep their references)."""
        params = {p.name: p for p in self.params()}
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params))
        if missing or unexpected:
            raise KeyError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        for name, p in params.items():
            value = np.asarray(state[name])
            if value.shape != p.value.shape:
                raise ValueError(f"{name}: expected shape {p.value.shape}, found {value.shape}")
            np.copyto(p.value, value, casting="same_kind")

    def num_params(self) -> int:
        return sum(p.value.size for p in self.params())

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"


_ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}


def build_mlp(
    sizes: list[int],
    *,
    activation: str = "relu",
    dropout: float = 0.0,
    init: str = "he",
    seed: int = 0,
    dtype=np.float32,
) -> Sequential:
    """A multilayer perceptron: `sizes=[784, 256, 10]` is Linear(784, 256), activation,
    [Dropout], Linear(256, 10). It returns logits; the softmax lives in the loss.

    Dropout, when > 0, follows every hidden activation. The first Linear skips the input
    gradient (nothing upstream learns). Weights and dropout masks are seeded from `seed`.
    """
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least an input and an output width, got {sizes}")
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {sorted(_ACTIVATIONS)}"
        )
    n_linear = len(sizes) - 1
    seeds = np.random.SeedSequence(seed).spawn(2 * n_linear)
    layers: list[Module] = []
    for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        rng = np.random.default_rng(seeds[k])
        layers.append(Linear(fan_in, fan_out, init=init, rng=rng, dtype=dtype, input_grad=k > 0))
        if k < n_linear - 1:  # hidden layer: activation, then optional dropout
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(Dropout(dropout, rng=np.random.default_rng(seeds[n_linear + k])))
    config = {
        "sizes": list(sizes),
        "activation": activation,
        "dropout": dropout,
        "init": init,
        "seed": seed,
        "dtype": np.dtype(dtype).name,
    }
    return Sequential(*layers, config=config)
