"""mnistlab: develop, train, fine-tune and deploy neural networks on MNIST-style data.

    import mnistlab as ml
    run = ml.train("quick", dataset="mnist-5k", epochs=1)
    run.evaluate("test")["accuracy"]
    run.predict(images)
    run = ml.load_run("runs/NAME"); run.history

The names below are imported on first use, so ``import mnistlab`` (and the CLI's
``--help``) stays fast and torch-free. See docs/python-api.md.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# public name -> the module that defines it
_API = {
    "train": "api", "load_run": "api", "list_runs": "api", "Run": "api",
    "TrainConfig": "config", "build_config": "config",
    "Predictor": "predict", "Prediction": "predict",
    "load_checkpoint": "checkpoint",
    "MnistlabError": "errors", "ConfigError": "errors", "DataError": "errors",
    "CheckpointError": "errors", "TrainingDiverged": "errors",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value  # next time, a plain attribute
        return value
    raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
