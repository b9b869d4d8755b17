"""Seed 000, "PyTorch Lightning 分布式训练入门指南": an MLP on MNIST with DDP on two GPUs.

The tutorial's code with its import changed (``pytorch_lightning`` -> ``surge.lightning``). Two things
are added around it, and only around it:

- data: torchvision's MNIST when torchvision is installed and the files are in ./data; otherwise
  scikit-learn's digits drawn at 28x28 (``surge.demos.mnist``). One line says which.
- devices: the tutorial's ``Trainer(accelerator='gpu', gpus=2, strategy='ddp')`` when two GPUs are
  there; otherwise the same DDP run on two CPU processes.

Run: ``python examples/seed000_mnist_ddp.py``. With ``SURGE_EXAMPLE_FAST=1`` it trains a few batches.
"""
import os

import torch

from surge.demos.mnist import offline_mnist, use_torchvision_mnist

# CI runs every example with SURGE_EXAMPLE_FAST=1 (examples/README.md): a few batches, not the whole run.
FAST = dict(max_epochs=1, limit_train_batches=4) if os.environ.get("SURGE_EXAMPLE_FAST") else {}

# ---- 2. the data set (the tutorial's code, when torchvision and the files are there)
if use_torchvision_mnist('./data'):
    from torchvision import datasets, transforms
    # 图像转换
    transform = transforms.Compose([
        transforms.ToTensor(),  # 将图像转换为Tensor格式
        transforms.Normalize((0.5,), (0.5,))  # 归一化处理
    ])
    # 下载MNIST数据集
    train_dataset = datasets.MNIST(root='./data', train=True, download=True, transform=transform)
else:
    train_dataset = offline_mnist(train=True, mean=0.5, std=0.5)
train_loader = torch.utils.data.DataLoader(dataset=train_dataset, batch_size=64, shuffle=True)

# ---- 3. the LightningModule (unchanged but for the import)
import surge.lightning as pl  # was: import pytorch_lightning as pl
import torch.nn.functional as F
from torch import nn


class MNISTModel(pl.LightningModule):
    def __init__(self):
        super(MNISTModel, self).__init__()
        self.l1 = nn.Linear(28 * 28, 128)  # 输入层
        self.l2 = nn.Linear(128, 10)  # 输出层

    def forward(self, x):
        x = x.view(x.size(0), -1)  # 展平输入
        x = F.relu(self.l1(x))  # 激活函数
        x = self.l2(x)  # 输出层
        return x

    def training_step(self, batch, batch_idx):
        x, y = batch
        y_hat = self.forward(x)  # 前向推理
        loss = F.cross_entropy(y_hat, y)  # 计算损失
        self.log('train_loss', loss)  # 记录损失
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.001)  # 优化器


# ---- 4. distributed training
from surge.lightning import Trainer  # was: from pytorch_lightning import Trainer

if torch.cuda.device_count() >= 2:
    # 设置 Trainer,使用 ddp 并指定 GPU 数量 (gpus=2 is the old spelling of devices=2; surge says so once)
    trainer = Trainer(accelerator='gpu', gpus=2, strategy='ddp', **FAST)  # DDP为分布式数据并行
else:
    # No two GPUs here: the same DDP run on two CPU processes (gloo instead of NCCL).
    trainer = Trainer(accelerator='cpu', devices=2, strategy='ddp', **FAST)

# ---- 5. train
model = MNISTModel()
trainer.fit(model, train_loader)

if trainer.is_global_zero:
    print(f"world size {trainer.world_size}, trained {trainer.global_step} steps, "
          f"train_loss {float(trainer.callback_metrics['train_loss']):.4f}")
