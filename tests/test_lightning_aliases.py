"""surge.lightning: Lightning's names are surge's own objects, and Lightning's old arguments say their new spelling."""
from __future__ import annotations

import importlib
import warnings

import pytest
import torch

import surge
import surge.lightning as pl
from surge.utils import MisconfigurationError


def test_names_are_surges_own_objects():
    assert pl.LightningModule is surge.Module
    assert pl.LightningDataModule is surge.DataModule
    assert pl.Trainer is surge.Trainer
    assert pl.seed_everything is surge.seed_everything
    assert pl.Callback is surge.Callback
    assert pl.callbacks.ModelCheckpoint is surge.ModelCheckpoint
    assert pl.callbacks.EarlyStopping is surge.EarlyStopping
    assert pl.callbacks.LearningRateMonitor is surge.callbacks.LearningRateMonitor
    assert pl.loggers.TensorBoardLogger is surge.loggers.TensorBoardLogger
    assert pl.loggers.CSVLogger is surge.loggers.CSVLogger
    assert pl.utilities.rank_zero_only is surge.rank_zero_only


# Lightning's module paths (lightning.pytorch.X / pytorch_lightning.X) and the surge object each name is.
LIGHTNING_PATHS = [
    ("core", "LightningModule", "surge.Module"),
    ("core.module", "LightningModule", "surge.Module"),
    ("core.datamodule", "LightningDataModule", "surge.DataModule"),
    ("trainer", "Trainer", "surge.Trainer"),
    ("trainer.trainer", "Trainer", "surge.Trainer"),
    ("callbacks.callback", "Callback", "surge.Callback"),
    ("callbacks.model_checkpoint", "ModelCheckpoint", "surge.ModelCheckpoint"),
    ("callbacks.early_stopping", "EarlyStopping", "surge.EarlyStopping"),
    ("callbacks.lr_monitor", "LearningRateMonitor", "surge.callbacks.LearningRateMonitor"),
    ("callbacks.model_summary", "ModelSummary", "surge.callbacks.ModelSummary"),
    ("callbacks.device_stats_monitor", "DeviceStatsMonitor", "surge.callbacks.DeviceStatsMonitor"),
    ("callbacks.throughput_monitor", "ThroughputMonitor", "surge.callbacks.ThroughputMonitor"),
    ("callbacks.progress", "TQDMProgressBar", "surge.callbacks.TQDMProgressBar"),
    ("callbacks.progress.tqdm_progress", "TQDMProgressBar", "surge.callbacks.TQDMProgressBar"),
    ("callbacks.progress.progress_bar", "ProgressBar", "surge.callbacks.ProgressBar"),
    ("callbacks", "ThroughputMonitor", "surge.callbacks.ThroughputMonitor"),
    ("callbacks", "StochasticWeightAveraging", "surge.callbacks.StochasticWeightAveraging"),
    ("callbacks.stochastic_weight_avg", "StochasticWeightAveraging", "surge.callbacks.swa.StochasticWeightAveraging"),
    ("callbacks", "ModelPruning", "surge.callbacks.ModelPruning"),
    ("callbacks.pruning", "ModelPruning", "surge.callbacks.pruning.ModelPruning"),
    ("callbacks", "RichModelSummary", "surge.callbacks.RichModelSummary"),
    ("callbacks.rich_model_summary", "RichModelSummary", "surge.callbacks.rich_model_summary.RichModelSummary"),
    ("loggers.logger", "Logger", "surge.loggers.Logger"),
    ("loggers.csv_logs", "CSVLogger", "surge.loggers.CSVLogger"),
    ("loggers.tensorboard", "TensorBoardLogger", "surge.loggers.TensorBoardLogger"),
    ("loggers", "MLFlowLogger", "surge.loggers.MLflowLogger"),
    ("loggers.mlflow", "MLFlowLogger", "surge.loggers.MLflowLogger"),
    ("loggers", "WandbLogger", "surge.loggers.WandbLogger"),
    ("loggers.wandb", "WandbLogger", "surge.loggers.WandbLogger"),
    ("utilities.exceptions", "MisconfigurationException", "surge.utils.MisconfigurationError"),
]


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("path, name, target", LIGHTNING_PATHS)
def test_lightnings_module_paths_hold_surges_objects(path, name, target):
    namespace: dict = {}
    exec(f"from surge.lightning.{path} import {name}", namespace)
    assert namespace[name] is _resolve(target)


def test_misconfiguration_exception_catches_what_surge_raises():
    from surge.lightning.utilities.exceptions import MisconfigurationException

    with pytest.raises(MisconfigurationException, match="max_epochs"):
        surge.Trainer(max_epochs="three")


def test_a_name_lightning_has_and_surge_does_not_is_absent_not_a_stub():
    with pytest.raises(AttributeError, match="BatchSizeFinder"):
        pl.callbacks.BatchSizeFinder  # noqa: B018  (surge has no tuner)
    with pytest.raises(ImportError):
        exec("from surge.lightning.callbacks import BatchSizeFinder", {})


@pytest.mark.parametrize("statement", [
    "from surge.lightning import Trainer, LightningModule, LightningDataModule, seed_everything",
    "from surge.lightning.callbacks import ModelCheckpoint, EarlyStopping, LearningRateMonitor, TQDMProgressBar",
    "from surge.lightning.loggers import TensorBoardLogger, CSVLogger, Logger",
    "from surge.lightning.utilities import rank_zero_only",
    "from surge.lightning.utilities.rank_zero import rank_zero_only, rank_zero_info",
    "from surge.lightning.utilities.seed import seed_everything",
])
def test_import_statements_of_ported_code(statement):
    exec(statement, {})


def test_submodules_are_the_attributes():
    # `pl.callbacks` and `import surge.lightning.callbacks` must be one module, whichever comes first
    assert pl.callbacks is importlib.import_module("surge.lightning.callbacks")
    assert pl.loggers is importlib.import_module("surge.lightning.loggers")
    assert pl.utilities is importlib.import_module("surge.lightning.utilities")


def test_a_lightning_style_module_trains(tmp_path):
    class Regression(pl.LightningModule):
        def __init__(self, lr=0.05):
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(3, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    class Data(pl.LightningDataModule):
        def setup(self, stage=None):
            x = torch.randn(256, 3, generator=torch.Generator().manual_seed(0))
            self.train_set = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))

        def train_dataloader(self):
            return torch.utils.data.DataLoader(self.train_set, batch_size=32)

    pl.seed_everything(0)
    checkpoint = pl.callbacks.ModelCheckpoint(monitor="train_loss", save_last=True)
    trainer = pl.Trainer(max_epochs=5, callbacks=[checkpoint], logger=pl.loggers.CSVLogger(tmp_path),
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    model = Regression()
    trainer.fit(model, Data())
    assert float(trainer.callback_metrics["train_loss"]) < 0.05
    assert Regression.load_from_checkpoint(checkpoint.best_model_path).hparams.lr == 0.05


# ---------------------------------------------------------------- the tutorials' old arguments
def test_gpus_zero_says_accelerator_cpu():
    with pytest.warns(DeprecationWarning, match=r"gpus=0.*accelerator='cpu'"):
        trainer = pl.Trainer(gpus=0, logger=False)
    assert trainer.strategy.root_device.type == "cpu"


@pytest.mark.parametrize("value,modern", [(16, "16-mixed"), ("16", "16-mixed"), ("bf16", "bf16-mixed")])
def test_precision_short_forms_say_their_modern_spelling(value, modern):
    with pytest.warns(DeprecationWarning, match=f"precision={value!r} is the old spelling of precision='{modern}'"):
        trainer = pl.Trainer(precision=value, logger=False, accelerator="cpu")
    assert trainer.precision == modern


def test_modern_spellings_are_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pl.Trainer(precision="16-mixed", accelerator="cpu", devices=1, logger=False)


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="checks the message on a machine without two GPUs")
def test_seed_000_gpu_line_on_a_machine_without_gpus():
    # The tutorial's exact line: the old spelling is translated (with its modern form), then the
    # missing GPUs are a clear error rather than a crash somewhere inside DDP.
    with pytest.warns(DeprecationWarning, match=r"gpus=2.*use accelerator='gpu', devices=2"):
        with pytest.raises(MisconfigurationError, match="accelerator='gpu'|devices=2"):
            pl.Trainer(accelerator='gpu', gpus=2, strategy='ddp')
