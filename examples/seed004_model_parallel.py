"""Seed 004, "PyTorch 流水线并行基础教程": a network split by hand across two devices.

Plain PyTorch, as in the tutorial (there is no Lightning import to change). The tutorial's code
does not run as printed, so three fixes, each marked ``# fix:``:

- ``model_part1 = SimpleNN().fc1`` and ``nn.Sequential(SimpleNN().fc2, SimpleNN().fc3)`` take layers
  from three different networks and drop the flatten and the ReLUs: the parts here come from one
  ``SimpleNN`` and keep its forward's steps.
- ``train`` moves the batch to ``device`` and ``PipelineModel`` moves it again; the target must be
  on the device of the *last* part, where the output is.
- The devices are ``cuda:0`` and ``cuda:1`` when there are two GPUs, else both halves on the CPU,
  so the same code runs here (the split is then only logical).

This is model parallelism: the second device waits while the first works. A real pipeline splits
each batch into micro-batches so both work at once: with surge that is
``Trainer(strategy="pipeline", devices=2)`` on the unsplit model (torch.distributed.pipelining, one
process per stage), or ``surge.strategies.ModelParallel(devices=["cuda:0", "cuda:1"])`` for this
one-process split without the hand-written placement (docs/pipeline.md).

Run: ``python examples/seed004_model_parallel.py``. With ``SURGE_EXAMPLE_FAST=1``: 20 batches.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from surge.demos.mnist import offline_mnist, use_torchvision_mnist

FAST = os.environ.get("SURGE_EXAMPLE_FAST")  # CI: a few batches (examples/README.md)

# fix: two GPUs when there are two, else both halves on the CPU
DEVICES = ('cuda:0', 'cuda:1') if torch.cuda.device_count() >= 2 else ('cpu', 'cpu')

# ---- 1. 准备数据集
if use_torchvision_mnist('./data'):
    import torchvision.transforms as transforms
    import torchvision.datasets as datasets
    # 定义数据转换
    transform = transforms.Compose([
        transforms.ToTensor(),  # 转换为Tensor
        transforms.Normalize((0.5,), (0.5,))  # 归一化
    ])
    # 下载并加载训练数据集
    train_dataset = datasets.MNIST(root='./data', train=True, download=True, transform=transform)
    test_dataset = datasets.MNIST(root='./data', train=False, download=True, transform=transform)
else:
    train_dataset = offline_mnist(train=True, mean=0.5, std=0.5)
    test_dataset = offline_mnist(train=False, mean=0.5, std=0.5)
train_loader = DataLoader(dataset=train_dataset, batch_size=64, shuffle=True)
test_loader = DataLoader(dataset=test_dataset, batch_size=256)


# ---- 2. 定义模型
class SimpleNN(nn.Module):
    def __init__(self):
        super(SimpleNN, self).__init__()
        self.fc1 = nn.Linear(28 * 28, 128)  # 第一层
        self.fc2 = nn.Linear(128, 64)  # 第二层
        self.fc3 = nn.Linear(64, 10)  # 输出层

    def forward(self, x):
        x = x.view(-1, 28 * 28)  # 展平
        x = F.relu(self.fc1(x))  # 第一层激活
        x = F.relu(self.fc2(x))  # 第二层激活
        x = self.fc3(x)  # 输出层
        return x


# ---- 3. 划分模型层 (fix: both parts from one network, with its flatten and activations)
net = SimpleNN()
model_part1 = nn.Sequential(nn.Flatten(), net.fc1, nn.ReLU())
model_part2 = nn.Sequential(net.fc2, nn.ReLU(), net.fc3)


# ---- 4. 使用 Pipeline 的特性
class PipelineModel(nn.Module):
    def __init__(self, part1, part2):
        super(PipelineModel, self).__init__()
        self.part1 = part1.to(DEVICES[0])  # 移至第一个 GPU
        self.part2 = part2.to(DEVICES[1])  # 移至第二个 GPU

    def forward(self, x):
        x = self.part1(x.to(DEVICES[0]))  # 输入到第一个 GPU
        x = self.part2(x.to(DEVICES[1]))  # 输入到第二个 GPU
        return x


# ---- 5. 训练模型 (fix: the target goes where the output is, the last part's device)
def train(model, train_loader, optimizer, criterion, device, max_batches=None):
    model.train()  # 设置模型为训练模式
    for i, (data, target) in enumerate(train_loader):
        if max_batches is not None and i == max_batches:
            break
        optimizer.zero_grad()  # 梯度清零
        output = model(data.to(device))  # 数据输入模型
        loss = criterion(output, target.to(DEVICES[1]))  # 损失计算
        loss.backward()  # 反向传播
        optimizer.step()  # 更新权重


# ---- 6. 评估模型
def evaluate(model, test_loader, criterion, device):
    model.eval()  # 设置模型为评估模式
    test_loss = 0
    correct = 0
    with torch.no_grad():  # 不需要计算梯度
        for data, target in test_loader:
            output = model(data.to(device))  # 数据输入模型
            test_loss += criterion(output, target.to(DEVICES[1])).item()  # 计算损失
            pred = output.argmax(dim=1, keepdim=True)  # 获取预测
            correct += pred.eq(target.view_as(pred).to(DEVICES[1])).sum().item()  # 对比并统计
    print(f'Test Loss: {test_loss/len(test_loader)}, Accuracy: {correct/len(test_loader.dataset)}')


if __name__ == "__main__":
    torch.manual_seed(0)
    model = PipelineModel(model_part1, model_part2)
    print(f"part1 on {DEVICES[0]}, part2 on {DEVICES[1]}")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(1 if FAST else 5):
        train(model, train_loader, optimizer, criterion, DEVICES[0], max_batches=20 if FAST else None)
        evaluate(model, test_loader, criterion, DEVICES[0])
