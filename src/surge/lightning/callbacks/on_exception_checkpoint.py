"""``surge.lightning.callbacks.on_exception_checkpoint``: ``OnExceptionCheckpoint`` is surge's own
(:mod:`surge.callbacks.on_exception_checkpoint`)."""
from ...callbacks.on_exception_checkpoint import OnExceptionCheckpoint

__all__ = ["OnExceptionCheckpoint"]
