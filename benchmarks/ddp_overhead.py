"""Per-step cost of surge's DDP against a hand-written DistributedDataParallel loop: 2 CPU processes, gloo.

One invocation: the script starts two processes itself (torch.multiprocessing), they create one gloo
process group, and both phases run in them, in alternating pairs so machine noise hits both alike.
surge finds the process group already there and uses it. The ratio of medians is printed.
``--aa`` runs the plain loop on both sides (an A/A run): how far the pair ratios stray from 1 with no
difference at all, the resolution of the measurement on this machine.
Usage: python benchmarks/ddp_overhead.py [--pairs 10] [--steps 200] [--batch 64] [--width 256] [--aa]
"""
import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import surge
from surge.launch import find_free_port

WORLD = 2


def make(width: int):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))


def dataset(steps: int, batch: int):
    # steps x batch samples per rank, so each phase takes `steps` steps.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch * WORLD, 32, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def plain(steps, batch, width) -> float:
    """The loop a user writes by hand: DistributedSampler, DDP, SGD."""
    data = dataset(steps, batch)
    loader = DataLoader(data, batch_size=batch, sampler=DistributedSampler(data, shuffle=True, seed=0))
    model = DistributedDataParallel(make(width))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    dist.barrier()
    t = time.perf_counter()
    for x, y in loader:
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
        trainer.strategy.barrier()
        self.t = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.elapsed = time.perf_counter() - self.t


def with_surge(steps, batch, width) -> float:
    timer = Timer()
    trainer = surge.Trainer(max_epochs=1, strategy="ddp", accelerator="cpu", devices=WORLD, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[timer])
    trainer.fit(Net(width), DataLoader(dataset(steps, batch), batch_size=batch, shuffle=True))
    return timer.elapsed / steps


def worker(rank: int, port: int, a) -> None:
    # What torchrun would set: surge reads it, and finds the process group created below.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    other, other_name = (plain, "plain again") if a.aa else (with_surge, "surge")  # --aa: the plain loop against itself
    plain(30, a.batch, a.width), other(30, a.batch, a.width)  # warm-up
    ours, base = [], []
    for i in range(a.pairs):
        # Which side runs first alternates, so a machine getting busier or quieter favours neither.
        if i % 2 == 0:
            base.append(plain(a.steps, a.batch, a.width))
            ours.append(other(a.steps, a.batch, a.width))
        else:
            ours.append(other(a.steps, a.batch, a.width))
            base.append(plain(a.steps, a.batch, a.width))
    b, s = statistics.median(base), statistics.median(ours)
    ratios = [y / x for x, y in zip(base, ours)]
    if rank == 0:
        print(f"torch {torch.__version__}, {WORLD} processes x {a.threads} thread(s), gloo, MLP width {a.width}, "
              f"batch {a.batch} per process, {a.steps} steps x {a.pairs} pairs")
        print(f"plain DDP loop  {b * 1e6:8.1f} us/step (median)")
        print(f"{other_name if a.aa else 'surge ddp':15s} {s * 1e6:8.1f} us/step (median)")
        print(f"ratio of the medians: {s / b:.3f}")
        print(f"median of the pair ratios: {statistics.median(ratios):.3f} (pairs {min(ratios):.3f}-{max(ratios):.3f})")
        print(f"pairs (plain, {other_name} us/step): " + ", ".join(f"({x * 1e6:.0f}, {y * 1e6:.0f})" for x, y in zip(base, ours)))
    dist.barrier()  # gloo may abort a process whose peer tears down first
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--aa", action="store_true", help="the plain loop on both sides (the instrument's own spread)")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // WORLD), help="torch threads per process")
    a = p.parse_args()
    mp.start_processes(worker, args=(find_free_port(), a), nprocs=WORLD, start_method="spawn")


if __name__ == "__main__":
    main()
