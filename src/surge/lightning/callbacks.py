"""``surge.lightning.callbacks``: Lightning's ``pytorch_lightning.callbacks`` names, which are surge's own."""
from ..callbacks import (Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint, ModelSummary, ProgressBar,
                         TQDMProgressBar)

__all__ = ["Callback", "EarlyStopping", "LearningRateMonitor", "ModelCheckpoint", "ModelSummary", "ProgressBar",
           "TQDMProgressBar"]
