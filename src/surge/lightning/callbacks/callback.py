"""``surge.lightning.callbacks.callback``: ``Callback`` is surge's own (:mod:`surge.callbacks.base`)."""
from ...callbacks.base import Callback

__all__ = ["Callback"]
