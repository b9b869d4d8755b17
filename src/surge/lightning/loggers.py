"""``surge.lightning.loggers``: Lightning's ``pytorch_lightning.loggers`` names, which are surge's own.

Lightning's base class is ``Logger`` (``LightningLoggerBase`` before 1.7); both names are given.
"""
from ..loggers import CSVLogger, Logger, TensorBoardLogger

LightningLoggerBase = Logger

__all__ = ["CSVLogger", "Logger", "LightningLoggerBase", "TensorBoardLogger"]
