"""ToyModel and ToyDataset: the smallest complete surge setup (a linear layer that logs its losses), for
surge's own tests and bug reports. Lightning's ``ToyModel``, with the numbers Lightning's tests count on,
is :mod:`surge.demos.boring`."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..datamodule import DataModule
from ..module import Module


class ToyDataset(Dataset):
    """``length`` random vectors of ``size`` features, fixed by ``seed``."""

    def __init__(self, size: int = 32, length: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randn(length, size, generator=g)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i]


class ToyModel(Module):
    """A linear layer trained to push its outputs towards zero; logs ``train_loss``, ``val_loss``, ``test_loss``.

    Example::

        surge.Trainer(max_epochs=1).fit(ToyModel())
    """

    def __init__(self, size: int = 32, out: int = 2, lr: float = 0.1, batch_size: int = 8):
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(size, out)

    def forward(self, x):
        return self.layer(x)

    def loss(self, x):
        out = self(x)
        return torch.nn.functional.mse_loss(out, torch.ones_like(out))

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("val_loss", loss)
        return loss

    def test_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("test_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)]

    def train_dataloader(self):
        return DataLoader(ToyDataset(self.hparams.size, 64, seed=1), batch_size=self.hparams.batch_size)

    def val_dataloader(self):
        return DataLoader(ToyDataset(self.hparams.size, 32, seed=2), batch_size=self.hparams.batch_size)

    def test_dataloader(self):
        return DataLoader(ToyDataset(self.hparams.size, 32, seed=3), batch_size=self.hparams.batch_size)

    def predict_dataloader(self):
        return DataLoader(ToyDataset(self.hparams.size, 16, seed=4), batch_size=self.hparams.batch_size)


class ToyDataModule(DataModule):
    """The ToyModel's data as a DataModule."""

    def __init__(self, size: int = 32, batch_size: int = 8):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        s = self.hparams.size
        self.train_set, self.val_set = ToyDataset(s, 64, 1), ToyDataset(s, 32, 2)
        self.test_set, self.predict_set = ToyDataset(s, 32, 3), ToyDataset(s, 16, 4)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=self.hparams.batch_size)

    def predict_dataloader(self):
        return DataLoader(self.predict_set, batch_size=self.hparams.batch_size)
