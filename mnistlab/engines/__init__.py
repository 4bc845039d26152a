"""Engines: the torch engine (models/, the visible loop) and the NumPy engine (scratch/).

Both meet the rest of mnistlab through one small protocol (``base.Engine``), looked up in
a registry by engine name or by model name; nothing else asks which engine a model uses.
"""

from .base import Engine, engine_for_model, get_engine, list_engines, list_models

__all__ = ["Engine", "engine_for_model", "get_engine", "list_engines", "list_models"]
