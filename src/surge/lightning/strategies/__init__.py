"""``surge.lightning.strategies``: Lightning's strategy names, which are surge's own classes (:mod:`surge.strategies`).

``DDPStrategy`` is :class:`surge.strategies.ddp.DDP`, ``FSDPStrategy`` is :class:`surge.strategies.fsdp.FSDP`
(loaded when first named), ``SingleDeviceStrategy`` is :class:`surge.strategies.single.SingleDevice`. Their
constructors are surge's (docs/lightning.md, "Module tree"). ``DeepSpeedStrategy``, ``XLAStrategy``,
``ParallelStrategy`` and Lightning's tensor-parallel ``ModelParallelStrategy`` are absent.
"""
from .ddp import DDPStrategy
from .single_device import SingleDeviceStrategy
from .strategy import Strategy

__all__ = ["Strategy", "DDPStrategy", "FSDPStrategy", "SingleDeviceStrategy"]


def __getattr__(name: str):
    if name == "FSDPStrategy":
        from .fsdp import FSDPStrategy

        globals()[name] = FSDPStrategy
        return FSDPStrategy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
