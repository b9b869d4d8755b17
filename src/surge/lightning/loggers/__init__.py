"""``surge.lightning.loggers``: Lightning's logger names, which are surge's own classes.

Lightning's base class is ``Logger`` (``LightningLoggerBase`` before 1.7; both names are given) and its
MLflow logger is spelled ``MLFlowLogger`` (surge: ``MLflowLogger``; the same class).
"""
from .csv_logs import CSVLogger
from .logger import Logger
from .tensorboard import TensorBoardLogger

LightningLoggerBase = Logger

__all__ = ["CSVLogger", "Logger", "LightningLoggerBase", "TensorBoardLogger", "MLFlowLogger", "WandbLogger"]


def __getattr__(name: str):
    if name == "MLFlowLogger":
        from .mlflow import MLFlowLogger

        globals()[name] = MLFlowLogger
        return MLFlowLogger
    if name == "WandbLogger":
        from .wandb import WandbLogger

        globals()[name] = WandbLogger
        return WandbLogger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
