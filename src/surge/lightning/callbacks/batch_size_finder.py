"""``surge.lightning.callbacks.batch_size_finder``: ``BatchSizeFinder`` is surge's own
(:mod:`surge.callbacks.batch_size_finder`)."""
from ...callbacks.batch_size_finder import BatchSizeFinder

__all__ = ["BatchSizeFinder"]
