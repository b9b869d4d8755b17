"""``surge.lightning.loggers.tensorboard``: ``TensorBoardLogger`` is surge's own."""
from ...loggers.tensorboard import TensorBoardLogger

__all__ = ["TensorBoardLogger"]
