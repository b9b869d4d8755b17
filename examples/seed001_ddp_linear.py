"""Seed 001, "pytorch中分布式训练DDP教程": a small linear model trained with DDP.

The tutorial writes DDP by hand with ``torch.distributed`` (init_process_group, broadcast of the
initial weights, all_reduce) and never defines its ``inputs`` and ``labels``. Here the same model,
loss and optimizer run under surge's DDP strategy, which does each of those steps for you:

================================================  ===============================================
tutorial                                          surge
================================================  ===============================================
``dist.init_process_group('nccl', 'env://')``    ``Trainer(strategy='ddp')`` starts the processes
                                                  and the group (NCCL on GPUs, gloo on CPUs)
``dist.broadcast(model.state_dict(), src=0)``    DDP copies rank 0's weights to every rank
``dist.all_reduce(model.state_dict())``          DDP averages the *gradients* in backward, so
                                                  every rank takes the same step
a loop over ranks, one training at a time        every rank trains at once on its share of data
================================================  ===============================================

Two CPU processes here; on a machine with GPUs, one process per GPU. At the end each rank reports
a checksum of its weights: they are equal, which is what the tutorial's broadcast and all_reduce
were for. Run: ``python examples/seed001_ddp_linear.py``.
"""
import os

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import surge.lightning as pl

# CI runs every example with SURGE_EXAMPLE_FAST=1 (examples/README.md): 2 epochs of 3 batches.
FAST = dict(limit_train_batches=3, max_steps=6) if os.environ.get("SURGE_EXAMPLE_FAST") else {}


# 定义模型 (the tutorial's model, unchanged)
class LinearModel(nn.Module):
    def __init__(self):
        super(LinearModel, self).__init__()
        self.fc1 = nn.Linear(5, 10)
        self.fc2 = nn.Linear(10, 5)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        x = self.fc2(x)
        return x


class LitLinear(pl.LightningModule):
    """The tutorial's loss, optimizer and training step; the loop and the collectives are the Trainer's."""

    def __init__(self):
        super().__init__()
        self.model = LinearModel()
        self.criterion = nn.MSELoss()  # 定义损失函数

    def training_step(self, batch, batch_idx):
        inputs, labels = batch
        outputs = self.model(inputs)
        loss = self.criterion(outputs, labels)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.001)  # 定义优化器

    def on_train_end(self):
        # What the tutorial's broadcast + all_reduce were meant to guarantee: the same weights everywhere.
        checksum = torch.stack([p.detach().double().sum() for p in self.parameters()]).sum()
        every_rank = self.trainer.strategy.all_gather(checksum)
        self.print(f"weight checksum on each of {len(every_rank)} ranks: "
                   f"{', '.join(f'{float(c):.6f}' for c in every_rank)}; "
                   f"identical: {bool((every_rank == every_rank[0]).all())}")


# The tutorial leaves inputs and labels undefined: a fixed random linear map plus noise to learn.
generator = torch.Generator().manual_seed(0)
inputs = torch.randn(2048, 5, generator=generator)
labels = inputs @ torch.randn(5, 5, generator=generator) + 0.1 * torch.randn(2048, 5, generator=generator)
train_loader = DataLoader(TensorDataset(inputs, labels), batch_size=64, shuffle=True)

if __name__ == "__main__":
    pl.seed_everything(0)
    if torch.cuda.is_available():
        trainer = pl.Trainer(strategy="ddp", accelerator="gpu", devices=-1, max_epochs=10, **FAST)
    else:
        trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=10, **FAST)
    trainer.fit(LitLinear(), train_loader)
    if trainer.is_global_zero:
        print(f"final train_loss {float(trainer.callback_metrics['train_loss']):.4f} after {trainer.global_step} steps")
