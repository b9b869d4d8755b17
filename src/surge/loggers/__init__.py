"""Loggers: where a run's metrics and hyperparameters go.

Each logger writes under ``save_dir/name/version_N`` and creates nothing until its first write.

Example::

    from surge.loggers import CSVLogger
    logger = CSVLogger("runs", name="mnist")       # runs/mnist/version_<next free>
    logger.log_metrics({"loss": 0.5}, step=0)
    logger.finalize("success")

Importing this package does not import TensorBoard, mlflow or wandb; each logger loads its library
when it first writes.
"""
from .base import DummyLogger, Logger
from .csv import CSVLogger
from .tensorboard import TensorBoardLogger

__all__ = ["Logger", "DummyLogger", "CSVLogger", "TensorBoardLogger", "MLflowLogger", "WandbLogger"]

_LAZY = {"MLflowLogger": "mlflow", "WandbLogger": "wandb"}


def __getattr__(name: str):
    # These modules are light, but keep the pattern: a logger's library (mlflow, wandb) loads on first use.
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
