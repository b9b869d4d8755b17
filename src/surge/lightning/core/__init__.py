"""``surge.lightning.core``: where Lightning code imports its module and datamodule classes from."""
from .datamodule import LightningDataModule
from .module import LightningModule

__all__ = ["LightningModule", "LightningDataModule"]
