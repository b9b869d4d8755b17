"""``surge.lightning.core.datamodule``: ``LightningDataModule`` is :class:`surge.DataModule`."""
from ...datamodule import DataModule as LightningDataModule

__all__ = ["LightningDataModule"]
