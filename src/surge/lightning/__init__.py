"""Lightning's names for surge's classes, so ported code needs only its import changed.

Example::

    import surge.lightning as pl                     # was: import pytorch_lightning as pl
    from surge.lightning import Trainer, LightningModule, LightningDataModule
    from surge.lightning.callbacks import ModelCheckpoint, EarlyStopping
    from surge.lightning.loggers import TensorBoardLogger
    from surge.lightning.utilities import rank_zero_only

These are surge's own objects under a second name (``pl.LightningModule is surge.Module``), not copies
or wrappers, so everything in surge's documentation applies to them.
"""
from ..callbacks import Callback
from ..datamodule import DataModule as LightningDataModule
from ..module import Module as LightningModule
from ..seed import seed_everything
from ..trainer import Trainer
from . import callbacks, core, loggers, trainer, utilities
from .utilities import rank_zero_only

__all__ = ["LightningModule", "LightningDataModule", "Trainer", "Callback", "seed_everything", "callbacks",
           "core", "loggers", "trainer", "utilities", "rank_zero_only"]
