"""``surge.lightning.trainer``: ``Trainer`` is :class:`surge.Trainer`."""
from .trainer import Trainer

__all__ = ["Trainer"]
