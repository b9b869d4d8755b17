"""Lightning's names for surge's classes, so ported code needs only its import changed.

Example::

    import surge.lightning as pl                     # was: import pytorch_lightning as pl
    from surge.lightning import Trainer, LightningModule, LightningDataModule

These are the same objects as surge's own (``pl.LightningModule is surge.Module``), not copies.
"""
from types import SimpleNamespace

from . import callbacks, loggers
from .datamodule import DataModule as LightningDataModule
from .module import Module as LightningModule
from .seed import seed_everything
from .trainer import Trainer
from .utils import rank_zero_only

utilities = SimpleNamespace(rank_zero_only=rank_zero_only, seed=SimpleNamespace(seed_everything=seed_everything))

__all__ = ["LightningModule", "LightningDataModule", "Trainer", "seed_everything", "callbacks", "loggers",
           "utilities", "rank_zero_only"]
