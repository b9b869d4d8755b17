"""``surge.lightning.strategies.ddp``: ``DDPStrategy`` is :class:`surge.strategies.ddp.DDP`."""
from ...strategies.ddp import DDP as DDPStrategy

__all__ = ["DDPStrategy"]
