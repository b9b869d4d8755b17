"""``surge.lightning.callbacks.early_stopping``: ``EarlyStopping`` is surge's own (:mod:`surge.callbacks.early_stopping`)."""
from ...callbacks.early_stopping import EarlyStopping

__all__ = ["EarlyStopping"]
