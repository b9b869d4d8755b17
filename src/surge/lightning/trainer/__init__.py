"""``surge.lightning.trainer``: ``Trainer`` is :class:`surge.Trainer`; ``seed_everything`` is surge's, as in Lightning."""
from ...seed import seed_everything
from . import states
from .trainer import Trainer

__all__ = ["Trainer", "seed_everything", "states"]
