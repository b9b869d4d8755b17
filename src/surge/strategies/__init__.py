"""Strategies: how training runs across devices and processes."""
from .single import SingleDevice
from .strategy import Strategy, get_strategy, register, strategy_names

__all__ = ["Strategy", "SingleDevice", "get_strategy", "register", "strategy_names", "Pipeline", "ModelParallel", "FSDP"]

_LAZY = {"Pipeline": "pipeline", "ModelParallel": "model_parallel", "FSDP": "fsdp"}  # torch.distributed.pipelining loads on first use


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
