"""surge: a PyTorch training framework.

Write a :class:`surge.Module`, optionally a :class:`surge.DataModule`, and run
``surge.Trainer(max_epochs=3).fit(module, datamodule)``.

The public names below are imported on first use, so ``import surge`` costs little more
than ``import torch`` (and, until a name is touched, not even that).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (relative to this package)
_LAZY = {
    "Module": "module",
    "DataModule": "datamodule",
    "Trainer": "trainer",
    "TrainerState": "state",
    "seed_everything": "seed",
    "Callback": "callbacks",
    "ModelCheckpoint": "callbacks",
    "EarlyStopping": "callbacks",
    "rank_zero_only": "utils",
    "AttributeDict": "hparams",
    "Tuner": "tuner",
}
_SUBMODULES = {"callbacks", "loggers", "strategies", "demos", "lightning", "precision", "cli", "utils"}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value  # cache: later lookups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'surge' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
