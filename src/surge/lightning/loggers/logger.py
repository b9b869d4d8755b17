"""``surge.lightning.loggers.logger``: the base ``Logger`` is surge's own."""
from ...loggers.base import Logger

__all__ = ["Logger"]
