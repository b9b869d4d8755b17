"""Seed 002, "PyTorch Lightning多显卡训练": DDP on two GPUs, then the same with mixed precision.

The tutorial's skeleton (``MyDataset`` and ``LitModel`` are ``pass``) is filled in with the smallest
real thing: a classifier on a generated data set. The Trainer lines are the tutorial's, with the
import changed; where two GPUs are not there, the same run goes on two CPU processes, and fp16 mixed
precision runs under CPU autocast.

Run: ``python examples/seed002_multi_gpu.py``. With ``SURGE_EXAMPLE_FAST=1``: 2 epochs of 2 batches.
"""
import os

import surge.lightning as pl  # was: import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset
import torch
import torch.nn.functional as F

# CI runs every example with SURGE_EXAMPLE_FAST=1 (examples/README.md): 2 epochs of 2 batches.
FAST = dict(limit_train_batches=2, max_steps=4) if os.environ.get("SURGE_EXAMPLE_FAST") else {}


class MyDataset(Dataset):
    # 实现自定义数据集: 4,096 points in 16 dimensions, labelled by which of 4 fixed directions they lean to
    def __init__(self, n=4096, dim=16, classes=4):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, dim, generator=generator)
        self.y = (self.x @ torch.randn(dim, classes, generator=generator)).argmax(1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index], self.y[index]


class LitModel(pl.LightningModule):
    def __init__(self):
        super().__init__()
        # 定义模型架构
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))

    def training_step(self, batch, batch_idx):
        # 实现训练步骤
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", (logits.argmax(1) == y).float().mean(), sync_dist=True)
        return loss

    def configure_optimizers(self):
        # 配置优化器
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def report(trainer, what):
    if trainer.is_global_zero:
        metrics = trainer.callback_metrics
        print(f"{what}: {trainer.world_size} processes on {trainer.strategy.root_device.type}, "
              f"precision {trainer.precision}, train_loss {float(metrics['train_loss']):.4f}, "
              f"train_acc {float(metrics['train_acc']):.3f}")


if __name__ == "__main__":
    pl.seed_everything(0)
    two_gpus = torch.cuda.device_count() >= 2

    # 数据加载器
    train_dataset = MyDataset()
    train_loader = DataLoader(train_dataset, batch_size=32, num_workers=4)

    # ---- 1. 分布式数据并行 (DDP)
    model = LitModel()  # 初始化模型
    if two_gpus:
        # 配置Trainer
        trainer = pl.Trainer(accelerator='gpu',
                             devices=2,  # 使用2块GPU
                             max_epochs=10, **FAST)
    else:
        trainer = pl.Trainer(accelerator='cpu', devices=2, max_epochs=10, **FAST)
    trainer.fit(model, train_loader)  # 开始训练
    report(trainer, "DDP")

    # ---- 2. 混合精度训练 (precision=16 is the old spelling of "16-mixed"; surge says so once)
    model = LitModel()
    if two_gpus:
        trainer = pl.Trainer(accelerator='gpu',
                             devices=2,
                             precision=16,  # 启用混合精度
                             max_epochs=10, **FAST)
    else:
        trainer = pl.Trainer(accelerator='cpu', devices=2, precision=16, max_epochs=10, **FAST)
    trainer.fit(model, train_loader)
    report(trainer, "DDP + mixed precision")
