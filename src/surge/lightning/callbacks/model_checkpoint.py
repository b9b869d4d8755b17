"""``surge.lightning.callbacks.model_checkpoint``: ``ModelCheckpoint`` is surge's own (:mod:`surge.callbacks.checkpoint`)."""
from ...callbacks.checkpoint import ModelCheckpoint

__all__ = ["ModelCheckpoint"]
