"""``surge.lightning.callbacks``: Lightning's callback names, which are surge's own classes.

One module per callback, as Lightning has them (``surge.lightning.callbacks.model_checkpoint`` ...). The
monitors and the rich progress bar load their libraries only when first named, as in :mod:`surge.callbacks`.
"""
from .callback import Callback
from .early_stopping import EarlyStopping
from .finetuning import BackboneFinetuning, BaseFinetuning
from .gradient_accumulation_scheduler import GradientAccumulationScheduler
from .lr_monitor import LearningRateMonitor
from .model_checkpoint import ModelCheckpoint
from .model_summary import ModelSummary
from .on_exception_checkpoint import OnExceptionCheckpoint
from .prediction_writer import BasePredictionWriter
from .progress import ProgressBar, TQDMProgressBar
from .pruning import ModelPruning
from .rich_model_summary import RichModelSummary
from .stochastic_weight_avg import StochasticWeightAveraging
from .timer import Timer

__all__ = ["Callback", "EarlyStopping", "BaseFinetuning", "BackboneFinetuning", "LearningRateMonitor", "ModelCheckpoint", "ModelSummary", "ProgressBar",
           "TQDMProgressBar", "GradientAccumulationScheduler", "OnExceptionCheckpoint", "BasePredictionWriter", "Timer",
           "StochasticWeightAveraging", "ModelPruning", "RichModelSummary",
           "DeviceStatsMonitor", "ThroughputMonitor", "RichProgressBar"]


def __getattr__(name: str):
    if name in ("DeviceStatsMonitor", "ThroughputMonitor", "RichProgressBar"):
        from ... import callbacks

        value = getattr(callbacks, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
