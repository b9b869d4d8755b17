"""``surge.lightning.tuner``: ``Tuner`` is surge's own (:mod:`surge.tuner`)."""
from ...tuner import Tuner

__all__ = ["Tuner"]
