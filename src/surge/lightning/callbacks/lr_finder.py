"""``surge.lightning.callbacks.lr_finder``: ``LearningRateFinder`` is surge's own (:mod:`surge.callbacks.lr_finder`)."""
from ...callbacks.lr_finder import LearningRateFinder

__all__ = ["LearningRateFinder"]
