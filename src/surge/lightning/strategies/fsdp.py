"""``surge.lightning.strategies.fsdp``: ``FSDPStrategy`` is :class:`surge.strategies.fsdp.FSDP`."""
from ...strategies.fsdp import FSDP as FSDPStrategy

__all__ = ["FSDPStrategy"]
