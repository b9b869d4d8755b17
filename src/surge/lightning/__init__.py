"""Lightning's names for surge's classes, so ported code needs only its import changed.

Example::

    import surge.lightning as pl                     # was: import pytorch_lightning as pl
    from surge.lightning import Trainer, LightningModule, LightningDataModule
    from surge.lightning.callbacks import ModelCheckpoint, EarlyStopping
    from surge.lightning.loggers import TensorBoardLogger
    from surge.lightning.utilities import rank_zero_only

These are surge's own objects under a second name (``pl.LightningModule is surge.Module``), not copies
or wrappers, so everything in surge's documentation applies to them.

Importing this package switches the process to Lightning's default names (:mod:`surge.dialect`): loggers
write under ``lightning_logs/`` and ``seed_everything`` leaves its seed in ``$PL_GLOBAL_SEED``.
``cli``, ``profilers``, ``strategies`` and ``tuner`` load when first named (``pl.cli`` needs jsonargparse).
"""
import importlib

from .. import dialect as _dialect
from ..banner import print_logo as cli_lightning_logo
from ..callbacks import Callback
from ..datamodule import DataModule as LightningDataModule
from ..module import Module as LightningModule
from ..seed import seed_everything
from ..trainer import Trainer
from . import callbacks, core, loggers, trainer, utilities
from .utilities import rank_zero_only

_dialect.use(_dialect.LIGHTNING)  # code written for Lightning finds lightning_logs/ and $PL_GLOBAL_SEED

__version__ = importlib.import_module("surge").__version__  # surge's version: this is surge, not Lightning

_LAZY_SUBMODULES = ("cli", "profilers", "strategies", "tuner")

__all__ = ["LightningModule", "LightningDataModule", "Trainer", "Callback", "seed_everything", "callbacks",
           "core", "loggers", "trainer", "utilities", "rank_zero_only", "cli_lightning_logo", "__version__"]


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # the import makes it an attribute of this package
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
