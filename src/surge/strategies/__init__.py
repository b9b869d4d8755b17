"""Strategies: how training runs across devices and processes."""
from .single import SingleDevice
from .strategy import Strategy, get_strategy, register, strategy_names

__all__ = ["Strategy", "SingleDevice", "get_strategy", "register", "strategy_names"]
