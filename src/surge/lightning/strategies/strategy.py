"""``surge.lightning.strategies.strategy``: the base ``Strategy`` is :class:`surge.strategies.strategy.Strategy`."""
from ...strategies.strategy import Strategy

__all__ = ["Strategy"]
