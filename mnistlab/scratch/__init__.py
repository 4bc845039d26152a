"""The NumPy engine: a neural network built from nothing but NumPy.

Layers with their backward passes, a stable softmax cross-entropy, He/Xavier init,
SGD/momentum/Adam/RMSprop, L2, learning-rate decay and early stopping. It never imports
torch (a test checks), and works in float32 unless a model is built with another dtype.

    model = build_mlp([784, 256, 10])
    opt = make_optimizer("adam", model.params(), lr=1e-3)
    fit(model, opt, x_train, y_train, x_val, y_val, epochs=10)  # workers=2: two processes
    logits = predict_logits(model, x_test)

See docs/from-scratch.md for the math of each backward pass.
"""

from .layers import (
    Dropout,
    Linear,
    Module,
    Param,
    ReLU,
    Sequential,
    Sigmoid,
    Tanh,
    build_mlp,
    init_weight,
)
from .losses import SoftmaxCrossEntropy, log_softmax, softmax
from .optim import SGD, Adam, Optimizer, RMSprop, make_optimizer
from .train import evaluate, fit, lr_at, predict_logits

__all__ = [
    "Adam",
    "Dropout",
    "Linear",
    "Module",
    "Optimizer",
    "Param",
    "RMSprop",
    "ReLU",
    "SGD",
    "Sequential",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "Tanh",
    "build_mlp",
    "evaluate",
    "fit",
    "init_weight",
    "log_softmax",
    "lr_at",
    "make_optimizer",
    "predict_logits",
    "softmax",
]
