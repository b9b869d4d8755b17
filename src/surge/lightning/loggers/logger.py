"""``surge.lightning.loggers.logger``: the base ``Logger`` and ``DummyLogger`` are surge's own."""
from ...loggers.base import DummyLogger, Logger

__all__ = ["Logger", "DummyLogger"]
