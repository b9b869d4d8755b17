"""``surge.lightning.core.module``: ``LightningModule`` is :class:`surge.Module`."""
from ...module import Module as LightningModule

__all__ = ["LightningModule"]
