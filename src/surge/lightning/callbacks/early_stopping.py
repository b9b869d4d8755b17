"""``surge.lightning.callbacks.early_stopping``: ``EarlyStopping`` and ``EarlyStoppingReason`` are surge's own
(:mod:`surge.callbacks.early_stopping`), and so is ``log``, the logger its verbose messages go to."""
from ...callbacks.early_stopping import EarlyStopping, EarlyStoppingReason, log

__all__ = ["EarlyStopping", "EarlyStoppingReason", "log"]
