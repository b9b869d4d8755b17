"""``surge.lightning.callbacks.early_stopping``: ``EarlyStopping`` and ``EarlyStoppingReason`` are surge's own
(:mod:`surge.callbacks.early_stopping`)."""
from ...callbacks.early_stopping import EarlyStopping, EarlyStoppingReason

__all__ = ["EarlyStopping", "EarlyStoppingReason"]
