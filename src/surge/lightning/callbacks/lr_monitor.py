"""``surge.lightning.callbacks.lr_monitor``: ``LearningRateMonitor`` is surge's own (:mod:`surge.callbacks.lr_monitor`)."""
from ...callbacks.lr_monitor import LearningRateMonitor

__all__ = ["LearningRateMonitor"]
