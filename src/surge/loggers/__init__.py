"""Loggers: where a run's metrics and hyperparameters go.

Each logger writes under ``save_dir/name/version_N`` and creates nothing until its first write.

Example::

    from surge.loggers import CSVLogger
    logger = CSVLogger("runs", name="mnist")       # runs/mnist/version_<next free>
    logger.log_metrics({"loss": 0.5}, step=0)
    logger.finalize("success")

Importing this package does not import TensorBoard; ``TensorBoardLogger`` loads it when it
opens its first event file.
"""
from .base import DummyLogger, Logger
from .csv import CSVLogger
from .tensorboard import TensorBoardLogger

__all__ = ["Logger", "DummyLogger", "CSVLogger", "TensorBoardLogger", "MLflowLogger"]


def __getattr__(name: str):
    # MLflowLogger's module is light, but keep the pattern: a logger's library loads on first use.
    if name == "MLflowLogger":
        from .mlflow import MLflowLogger

        globals()[name] = MLflowLogger
        return MLflowLogger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
