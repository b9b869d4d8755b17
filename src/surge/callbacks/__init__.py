"""Callbacks that ship with surge; subclass :class:`Callback` for your own."""
from .base import Callback
from .checkpoint import ModelCheckpoint
from .early_stopping import EarlyStopping
from .finetuning import BackboneFinetuning, BaseFinetuning
from .gradient_accumulation import GradientAccumulationScheduler
from .lr_monitor import LearningRateMonitor
from .model_summary import ModelSummary
from .on_exception_checkpoint import OnExceptionCheckpoint
from .prediction_writer import BasePredictionWriter
from .pruning import ModelPruning
from .rich_model_summary import RichModelSummary
from .swa import StochasticWeightAveraging
from .progress import ProgressBar, TQDMProgressBar
from .timer import Timer

__all__ = ["Callback", "ModelCheckpoint", "EarlyStopping", "BaseFinetuning", "BackboneFinetuning", "LearningRateMonitor", "ModelSummary", "ProgressBar",
           "TQDMProgressBar", "GradientAccumulationScheduler", "OnExceptionCheckpoint", "BasePredictionWriter", "Timer",
           "StochasticWeightAveraging", "ModelPruning", "RichModelSummary",
           "DeviceStatsMonitor", "ThroughputMonitor", "RichProgressBar"]

# Imported on first use: their modules pull in psutil, rich or the FLOP counter only when used.
_LAZY = {"DeviceStatsMonitor": "device_stats", "ThroughputMonitor": "throughput", "RichProgressBar": "rich_progress"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
