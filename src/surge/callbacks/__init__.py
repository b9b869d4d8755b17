"""Callbacks that ship with surge; subclass :class:`Callback` for your own."""
from .base import Callback
from .checkpoint import ModelCheckpoint
from .early_stopping import EarlyStopping
from .lr_monitor import LearningRateMonitor
from .model_summary import ModelSummary
from .progress import ProgressBar, TQDMProgressBar

__all__ = ["Callback", "ModelCheckpoint", "EarlyStopping", "LearningRateMonitor", "ModelSummary", "ProgressBar",
           "TQDMProgressBar"]
