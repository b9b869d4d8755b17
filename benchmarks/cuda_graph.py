"""Per-step time of a tiny MLP on a GPU: plain loop vs surge vs surge with cuda_graphs=True (CUDA only).

The model (32 -> 256 -> 256 -> 2, batch 64) is launch-bound on any GPU: the step's time is Python and
kernel launches, not arithmetic, which is where a CUDA graph helps. Runs alternate in pairs in one
process; the medians are printed with their ratio to the plain loop. The data lives on the GPU already
(a list of device tensors), so the input pipeline is not what is measured.

Usage: python benchmarks/cuda_graph.py [--pairs 5] [--steps 500] [--batch 64] [--width 256]
"""
import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import surge


def make(width: int):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))


def batches(steps: int, batch: int, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps, batch, 32, generator=g)
    y = (x[..., 0] > 0).long()
    return [(x[i].to(device), y[i].to(device)) for i in range(steps)]


def plain(data, width, device) -> float:
    model = make(width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for x, y in data:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / len(data)


class Net(surge.Module):
    def __init__(self, width):
        super().__init__()
        self.net = make(width)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Timer(surge.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 1:  # after the first step: a CUDA graph is captured there
            torch.cuda.synchronize()
            self.t = time.perf_counter()

    def on_train_end(self, trainer, module):
        torch.cuda.synchronize()
        self.elapsed = time.perf_counter() - self.t


def with_surge(data, width, cuda_graphs: bool) -> float:
    timer = Timer()
    trainer = surge.Trainer(max_epochs=1, accelerator="cuda", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                            cuda_graphs=cuda_graphs)
    trainer.fit(Net(width), data)
    return timer.elapsed / (len(data) - 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=256)
    a = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("cuda_graph.py measures CUDA graphs and needs a CUDA GPU; none is available here "
                 "(benchmarks/step_overhead.py is the CPU per-step benchmark)")
    device = torch.device("cuda", 0)
    data = batches(a.steps, a.batch, device)
    warm = data[:50]
    plain(warm, a.width, device), with_surge(warm, a.width, False), with_surge(warm, a.width, True)
    times = {"plain loop": [], "surge fit": [], "surge cuda_graphs": []}
    for _ in range(a.pairs):
        times["plain loop"].append(plain(data, a.width, device))
        times["surge fit"].append(with_surge(data, a.width, False))
        times["surge cuda_graphs"].append(with_surge(data, a.width, True))
    base = statistics.median(times["plain loop"])
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, MLP width {a.width}, batch {a.batch}, "
          f"{a.steps} steps x {a.pairs} rounds")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<18} {med * 1e6:8.1f} us/step   ratio to plain {med / base:.3f}")


if __name__ == "__main__":
    main()
