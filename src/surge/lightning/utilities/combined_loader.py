"""``surge.lightning.utilities.combined_loader``: ``CombinedLoader`` is :class:`surge.combined_loader.CombinedLoader`."""
from ...combined_loader import CombinedLoader

__all__ = ["CombinedLoader"]
