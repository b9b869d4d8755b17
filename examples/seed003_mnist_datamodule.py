"""Seed 003, "PyTorch Lightning:从零构建高效深度学习模型": the MNIST data modules.

``MNISTDataModule`` and ``MyDataModule`` are the tutorial's with the import changed. The tutorial
pairs them with ``LinearRegression`` (10 inputs, one output), which cannot read 28x28 images; here
they train a small classifier written the same way. The regression half of the tutorial is in
``seed003_linear_regression.py``.

MNIST: torchvision's, when torchvision is installed and the files are in ./data; otherwise
scikit-learn's digits drawn at 28x28 (``surge.demos.mnist``). One line says which.

Run: ``python examples/seed003_mnist_datamodule.py``. With ``SURGE_EXAMPLE_FAST=1``: a few batches.
"""
import os

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, random_split
from surge.lightning import LightningDataModule, LightningModule, Trainer  # was: from pytorch_lightning import ...
from surge.lightning.loggers import TensorBoardLogger
from surge.demos.mnist import offline_mnist, use_torchvision_mnist

try:
    from torchvision.datasets import MNIST
    from torchvision import transforms
except ImportError:  # use_torchvision_mnist() is False then, and the data comes from offline_mnist()
    MNIST = transforms = None

# CI runs every example with SURGE_EXAMPLE_FAST=1 (examples/README.md): 2 epochs of 2 batches.
FAST = dict(limit_train_batches=2, limit_val_batches=2, limit_test_batches=2, max_steps=4) \
    if os.environ.get("SURGE_EXAMPLE_FAST") else {}


class MNISTDataModule(LightningDataModule):
    def __init__(self, data_dir='./data', batch_size=32):
        super().__init__()
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.have_mnist = use_torchvision_mnist(data_dir)
        if self.have_mnist:
            self.transform = transforms.Compose([
                transforms.ToTensor(),
                transforms.Normalize((0.1307,), (0.3081,))
            ])

    def prepare_data(self):
        if self.have_mnist:
            # 下载数据集
            MNIST(self.data_dir, train=True, download=True)
            MNIST(self.data_dir, train=False, download=True)

    def setup(self, stage=None):
        # 加载并划分数据集
        if self.have_mnist:
            mnist_train = MNIST(self.data_dir, train=True, transform=self.transform)
            mnist_test = MNIST(self.data_dir, train=False, transform=self.transform)
            self.train_dataset, self.val_dataset = random_split(mnist_train, [55000, 5000])
        else:  # the same split in proportion: 55000/60000 of the training set trains
            mnist_train = offline_mnist(train=True, mean=0.1307, std=0.3081)
            mnist_test = offline_mnist(train=False, mean=0.1307, std=0.3081)
            self.train_dataset, self.val_dataset = random_split(mnist_train, [55 / 60, 5 / 60])
        self.test_dataset = mnist_test

    def train_dataloader(self):
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.val_dataset, batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.test_dataset, batch_size=self.batch_size)


class MyDataModule(LightningDataModule):
    def setup(self, stage=None):
        # 加载并划分数据集
        if use_torchvision_mnist('./data'):
            dataset = MNIST(root='./data', train=True, download=True, transform=transforms.ToTensor())
            self.train_dataset, self.val_dataset = random_split(dataset, [55000, 5000])
        else:
            dataset = offline_mnist(train=True, mean=0.0, std=1.0)  # ToTensor() alone: pixels in [0, 1]
            self.train_dataset, self.val_dataset = random_split(dataset, [55 / 60, 5 / 60])

    def train_dataloader(self):
        return DataLoader(self.train_dataset, batch_size=32)

    def val_dataloader(self):
        return DataLoader(self.val_dataset, batch_size=32)


class MNISTClassifier(LightningModule):
    """Not in the tutorial (its LinearRegression takes 10 numbers, not an image): the same shape of
    module, with a two-layer network and cross-entropy."""

    def __init__(self, hidden=128, lr=1e-3):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x)

    def _step(self, batch, stage):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log(f'{stage}_loss', loss, prog_bar=stage != 'train')
        self.log(f'{stage}_acc', (logits.argmax(1) == y).float().mean(), prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, 'train')

    def validation_step(self, batch, batch_idx):
        self._step(batch, 'val')

    def test_step(self, batch, batch_idx):
        self._step(batch, 'test')

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


if __name__ == "__main__":
    torch.manual_seed(0)

    # ---- 训练流程: 1. 初始化模型和数据模块
    model = MNISTClassifier()
    data_module = MNISTDataModule(batch_size=64)

    # ---- 2. 配置 Trainer (gpus=0 is the old spelling of accelerator='cpu'; surge says so once)
    trainer = Trainer(
        max_epochs=10,
        gpus=1 if torch.cuda.is_available() else 0,
        logger=TensorBoardLogger("logs/"),
        **FAST,
    )

    # ---- 3. 启动训练, 4. 模型评估
    trainer.fit(model, data_module)
    trainer.validate(model, data_module)
    results = trainer.test(model, data_module)
    print(f"MNISTDataModule: test_acc {results[0]['test_acc']:.3f}, logs in {trainer.log_dir}")

    # ---- 数据处理模块化: MyDataModule has no test set; train and validate with it
    model = MNISTClassifier()
    trainer = Trainer(max_epochs=10, **FAST)
    trainer.fit(model, MyDataModule())
    print(f"MyDataModule: val_acc {float(trainer.callback_metrics['val_acc']):.3f}")
