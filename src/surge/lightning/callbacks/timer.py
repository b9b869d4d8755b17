"""``surge.lightning.callbacks.timer``: ``Timer`` and ``Interval`` are surge's own (:mod:`surge.callbacks.timer`)."""
from ...callbacks.timer import Interval, Timer

__all__ = ["Timer", "Interval"]
