"""Per-step cost of surge's Trainer.fit against a plain PyTorch loop, same model, data and process.

The two run in alternating pairs so machine noise hits both alike; the ratio of medians is printed.
Usage: python benchmarks/step_overhead.py [--pairs 5] [--steps 400] [--batch 64] [--width 256]
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge


def make(width: int):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))


def loader(steps: int, batch: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch, 32, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)


def plain(steps, batch, width) -> float:
    model, data = make(width), loader(steps, batch)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    t = time.perf_counter()
    for x, y in data:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return (time.perf_counter() - t) / steps


class Net(surge.Module):
    def __init__(self, width):
        super().__init__()
        self.net = make(width)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Timer(surge.Callback):
    def on_train_start(self, trainer, module):
        self.t = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.elapsed = time.perf_counter() - self.t


def with_surge(steps, batch, width) -> float:
    timer = Timer()
    trainer = surge.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(Net(width), loader(steps, batch))
    return timer.elapsed / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=256)
    a = p.parse_args()
    plain(50, a.batch, a.width), with_surge(50, a.batch, a.width)  # warm-up
    ours, base = [], []
    for _ in range(a.pairs):
        base.append(plain(a.steps, a.batch, a.width))
        ours.append(with_surge(a.steps, a.batch, a.width))
    b, s = statistics.median(base), statistics.median(ours)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, MLP width {a.width}, batch {a.batch}, "
          f"{a.steps} steps x {a.pairs} pairs")
    print(f"plain loop  {b * 1e6:8.1f} us/step")
    print(f"surge fit   {s * 1e6:8.1f} us/step")
    print(f"ratio surge/plain: {s / b:.3f}")


if __name__ == "__main__":
    main()
