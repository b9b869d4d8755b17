"""Linear regression on generated data: the tutorials' first model, with data whose answer is known.

``RegressionData`` draws x in R^d and y = x·w + b + noise with a fixed seed; ``LinearRegression``
should recover w and b (``true_weight``/``true_bias`` on the data module), which makes it a small
end-to-end check of a whole training setup.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..datamodule import DataModule
from ..module import Module


class RegressionData(DataModule):
    """``n`` points, split 80/10/10 into train/val/test, y = x·w + b + ``noise``·N(0, 1)."""

    def __init__(self, n: int = 4096, input_dim: int = 10, noise: float = 0.1, batch_size: int = 64, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        g = torch.Generator().manual_seed(seed)
        self.true_weight = torch.randn(input_dim, 1, generator=g)
        self.true_bias = torch.randn(1, generator=g)
        x = torch.randn(n, input_dim, generator=g)
        y = x @ self.true_weight + self.true_bias + noise * torch.randn(n, 1, generator=g)
        a, b = int(0.8 * n), int(0.9 * n)
        self.splits = {"train": TensorDataset(x[:a], y[:a]), "val": TensorDataset(x[a:b], y[a:b]),
                       "test": TensorDataset(x[b:], y[b:])}

    def train_dataloader(self):
        return DataLoader(self.splits["train"], batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.splits["val"], batch_size=256)

    def test_dataloader(self):
        return DataLoader(self.splits["test"], batch_size=256)


class LinearRegression(Module):
    """One linear layer trained with MSE; logs ``train_loss``, ``val_loss``, ``test_loss``."""

    def __init__(self, input_dim: int = 10, output_dim: int = 1, lr: float = 0.02):
        super().__init__()
        self.save_hyperparameters()
        self.linear = nn.Linear(input_dim, output_dim)

    def forward(self, x):
        return self.linear(x)

    def _loss(self, batch):
        x, y = batch
        return F.mse_loss(self(x), y)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._loss(batch))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
