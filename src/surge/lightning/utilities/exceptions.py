"""``surge.lightning.utilities.exceptions``: ``MisconfigurationException`` is surge's own
:class:`surge.utils.MisconfigurationError`, so ``except MisconfigurationException`` catches what surge raises."""
from ...utils import MisconfigurationError as MisconfigurationException

__all__ = ["MisconfigurationException"]
