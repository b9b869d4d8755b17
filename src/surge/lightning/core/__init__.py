"""``surge.lightning.core``: where Lightning code imports its module and datamodule classes from;
``core.optimizer.LightningOptimizer`` is what ``self.optimizers()`` returns."""
from . import optimizer
from .datamodule import LightningDataModule
from .module import LightningModule

__all__ = ["LightningModule", "LightningDataModule", "optimizer"]
