"""Seed 003, "PyTorch Lightning:从零构建高效深度学习模型": the linear regression and MyModel.

``LinearRegression``, ``MyModel`` and the Trainer lines are the tutorial's with the import changed.
The tutorial calls ``trainer.fit(model)`` on models that define no data, which fails in Lightning
too; here they get a data module of generated regression data (y = x·w + b + noise) to learn from.
The tutorial's MNIST data module is in ``seed003_mnist_datamodule.py``.

Run: ``python examples/seed003_linear_regression.py`` (logs go to ./logs/). With
``SURGE_EXAMPLE_FAST=1``: 2 epochs of 2 batches.
"""
import os

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset, random_split
from surge.lightning import LightningDataModule, LightningModule  # was: from pytorch_lightning import ...

# CI runs every example with SURGE_EXAMPLE_FAST=1 (examples/README.md): 2 epochs of 2 batches.
FAST = dict(limit_train_batches=2, max_steps=4) if os.environ.get("SURGE_EXAMPLE_FAST") else {}


class LinearRegression(LightningModule):
    def __init__(self, input_dim=10, output_dim=1):
        super().__init__()
        self.linear = nn.Linear(input_dim, output_dim)

    def forward(self, x):
        return self.linear(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        y_hat = self(x)
        loss = F.mse_loss(y_hat, y)
        self.log('train_loss', loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        y_hat = self(x)
        loss = F.mse_loss(y_hat, y)
        self.log('val_loss', loss)

    def test_step(self, batch, batch_idx):
        x, y = batch
        y_hat = self(x)
        loss = F.mse_loss(y_hat, y)
        self.log('test_loss', loss)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=0.02)
        return optimizer


class MyModel(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(10, 1)

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        y_hat = self(x)
        loss = F.mse_loss(y_hat, y)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.02)


class RegressionDataModule(LightningDataModule):
    """Not in the tutorial: 4,096 points x in R^10 with y = x·w + b + noise, split 80/10/10."""

    def __init__(self, batch_size=64, input_dim=10, noise=0.1):
        super().__init__()
        self.batch_size, self.input_dim, self.noise = batch_size, input_dim, noise

    def setup(self, stage=None):
        generator = torch.Generator().manual_seed(0)
        self.true_w = torch.randn(self.input_dim, 1, generator=generator)
        x = torch.randn(4096, self.input_dim, generator=generator)
        y = x @ self.true_w + 0.5 + self.noise * torch.randn(4096, 1, generator=generator)
        self.train_dataset, self.val_dataset, self.test_dataset = random_split(
            TensorDataset(x, y), [0.8, 0.1, 0.1], generator=torch.Generator().manual_seed(0))

    def train_dataloader(self):
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_dataset, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.test_dataset, batch_size=self.batch_size)


if __name__ == "__main__":
    from surge.lightning import Trainer, seed_everything
    from surge.lightning.loggers import TensorBoardLogger  # was: from pytorch_lightning.loggers import ...

    seed_everything(0)
    data_module = RegressionDataModule()

    # ---- 2. Trainer: 配置并启动 (gpus=0 is the old spelling of accelerator='cpu'; surge says so once)
    model = LinearRegression()
    logger = TensorBoardLogger("logs/", name="linear_regression")
    trainer = Trainer(
        max_epochs=10,
        gpus=1 if torch.cuda.is_available() else 0,
        logger=logger,
        check_val_every_n_epoch=1,
        log_every_n_steps=50,
        **FAST,
    )
    trainer.fit(model, data_module)  # the tutorial: trainer.fit(model), but LinearRegression has no data

    # ---- 4. 模型评估
    trainer.validate(model, data_module)
    results = trainer.test(model, data_module)
    error = (model.linear.weight.detach().T - data_module.true_w).abs().max()
    print(f"linear regression: test_loss {results[0]['test_loss']:.4f}, largest weight error {float(error):.3f}, "
          f"logs in {trainer.log_dir}")

    # ---- 模块化设计: MyModel with the plainest Trainer
    model = MyModel()
    trainer = Trainer(max_epochs=10, **FAST)
    trainer.fit(model, data_module)
    print(f"MyModel: trained {trainer.global_step} steps over {trainer.current_epoch} epochs")
