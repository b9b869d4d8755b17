"""``surge.lightning.tuner.lr_finder``: what ``Tuner.lr_find`` returns is :class:`surge.tuner.LRFinder`."""
from ...tuner import LRFinder

__all__ = ["LRFinder"]
