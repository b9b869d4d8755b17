"""Per-step cost of surge's DDP against a hand-written DistributedDataParallel loop: 2 CPU processes, gloo.

One invocation: the script starts two processes itself (torch.multiprocessing), they create one gloo
process group, and both sides run in them, in alternating pairs so machine noise hits both alike.
surge finds the process group already there and uses it.

Per step: both sides read their batches through the same DataLoader with the same collate function, which
notes the time of each batch fetch. A side's step time is the time from the fetch of batch ``--skip`` to the
fetch of the last batch, over the steps between: whole steps (fetch, forward, backward, optimizer step and,
for surge, its loop), without the start and end of the fit. Those are printed apart, per fit: what a fit costs
beyond its steps (surge: the epoch's start, its first steps' checks, the epoch-end agreement across ranks).
Printed: the median step time of each side, the ratio of the medians, and the median of the pair ratios with
a 95% bootstrap interval (the pairs resampled with replacement, 2000 times): how far that median could move
with another draw of pairs on the same machine.

``--launches N`` starts the two processes N times, one launch after another, each running ``--pairs`` pairs,
and then pools every launch's pairs. On a shared machine one launch as a whole can come out faster or slower
than the next by more than its own interval says (its medians' intervals need not overlap); pooled launches
average that out.

Each rank runs on its own cores, as surge's launcher places the CPU ranks it starts (``surge.cores.core_blocks``,
every thread of the process bound there before the process group starts, so gloo's threads too): both sides run
in those processes. ``--no-bind`` leaves the placement to the OS scheduler, which moves the threads between the
cores (on a 2-core VM that costs the side with more Python per step a few percent more than its instructions).

``--aa`` runs the plain loop on both sides (an A/A run): how far the pair ratios stray from 1 with no
difference at all, the resolution of the measurement on this machine.
Usage: python benchmarks/ddp_overhead.py [--pairs 30] [--launches 1] [--steps 120] [--skip 3] [--batch 64] [--width 256]
       [--aa] [--no-bind]
"""
import argparse
import json
import os
import random
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset, default_collate

import surge
from surge.cores import bind_to_cpus, core_blocks
from surge.launch import find_free_port

WORLD = 2


def make(width: int):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))


def dataset(steps: int, batch: int):
    # steps x batch samples per rank, so each side takes `steps` steps.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch * WORLD, 32, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


class Stamps:
    """The DataLoader's collate function on both sides: default_collate, noting when each batch was fetched."""

    def __init__(self):
        self.times = []

    def __call__(self, samples):
        self.times.append(time.perf_counter())
        return default_collate(samples)


class Run:
    """One side's fit: its wall time (first batch fetch included, after a barrier) and its batches' fetch times."""

    def __init__(self, seconds: float, stamps: list):
        self.seconds, self.stamps = seconds, stamps

    def step(self, skip: int) -> float:
        """Seconds per step, from the fetch of batch ``skip`` to that of the last batch."""
        t = self.stamps
        return (t[-1] - t[skip]) / (len(t) - 1 - skip)

    def outside_steps(self, skip: int) -> float:
        """Seconds of the fit not spent in its steps, at this fit's own steady step time."""
        return self.seconds - self.step(skip) * len(self.stamps)


def bootstrap_median(values: list, rounds: int = 2000, seed: int = 0) -> tuple:
    """The 2.5% and 97.5% points of the median of ``values`` resampled with replacement ``rounds`` times."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(rounds))
    return medians[int(0.025 * rounds)], medians[int(0.975 * rounds) - 1]


def plain_run(steps, batch, width) -> Run:
    """The loop a user writes by hand: DistributedSampler, DDP, SGD."""
    data, stamps = dataset(steps, batch), Stamps()
    loader = DataLoader(data, batch_size=batch, sampler=DistributedSampler(data, shuffle=True, seed=0),
                        collate_fn=stamps)
    model = DistributedDataParallel(make(width))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    dist.barrier()
    t = time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return Run(time.perf_counter() - t, stamps.times)


def plain(steps, batch, width) -> float:
    """Seconds per step of the plain loop's whole fit (used by the other DDP benchmarks)."""
    return plain_run(steps, batch, width).seconds / steps


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


def surge_run(steps, batch, width) -> Run:
    timer, stamps = Timer(), Stamps()
    trainer = surge.Trainer(max_epochs=1, strategy="ddp", accelerator="cpu", devices=WORLD, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[timer])
    trainer.fit(Net(width), DataLoader(dataset(steps, batch), batch_size=batch, shuffle=True, collate_fn=stamps))
    return Run(timer.elapsed, stamps.times)


def with_surge(steps, batch, width) -> float:
    """Seconds per step of surge's whole fit (used by the other DDP benchmarks)."""
    return surge_run(steps, batch, width).seconds / steps


def worker(rank: int, port: int, a, report: str) -> None:
    # What torchrun would set: surge reads it, and finds the process group created below.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(a.threads)
    blocks = None if a.no_bind else core_blocks(WORLD)
    if blocks:  # and, as surge's launcher, say how many cores the ranks share (surge counts them for its warnings)
        os.environ["SURGE_NODE_CPUS"] = str(sum(map(len, blocks)))
        bind_to_cpus(blocks[rank])
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    other, other_name = (plain_run, "plain again") if a.aa else (surge_run, "surge")  # --aa: plain against itself
    plain_run(30, a.batch, a.width), other(30, a.batch, a.width)  # warm-up
    base, ours = [], []
    for i in range(a.pairs):
        # Which side runs first alternates, so a machine getting busier or quieter favours neither.
        if i % 2 == 0:
            base.append(plain_run(a.steps, a.batch, a.width))
            ours.append(other(a.steps, a.batch, a.width))
        else:
            ours.append(other(a.steps, a.batch, a.width))
            base.append(plain_run(a.steps, a.batch, a.width))
    b = [r.step(a.skip) for r in base]
    s = [r.step(a.skip) for r in ours]
    ratios = [y / x for x, y in zip(b, s)]
    if rank == 0:
        med = statistics.median
        placed = f"on cores {' / '.join(map(str, blocks))}" if blocks else "placed by the OS"
        print(f"torch {torch.__version__}, {WORLD} processes x {a.threads} thread(s) {placed}, gloo, "
              f"MLP width {a.width}, batch {a.batch} per process, {a.steps} steps x {a.pairs} pairs, "
              f"steps from batch {a.skip} on")
        print(f"plain DDP loop  {med(b) * 1e6:8.1f} us/step (median)")
        print(f"{other_name if a.aa else 'surge ddp':15s} {med(s) * 1e6:8.1f} us/step (median)")
        print(f"ratio of the medians: {med(s) / med(b):.3f}")
        low, high = bootstrap_median(ratios)
        print(f"median of the pair ratios: {med(ratios):.3f} (95% bootstrap interval {low:.3f}-{high:.3f}; "
              f"pairs {min(ratios):.3f}-{max(ratios):.3f})")
        print(f"pairs (plain, {other_name} us/step): " + ", ".join(f"({x * 1e6:.0f}, {y * 1e6:.0f})" for x, y in zip(b, s)))
        print(f"per fit, outside the steps (median): plain {med(r.outside_steps(a.skip) for r in base) * 1e3:.2f} ms, "
              f"{other_name} {med(r.outside_steps(a.skip) for r in ours) * 1e3:.2f} ms")
        whole = [o.seconds / p.seconds for p, o in zip(base, ours)]
        print(f"whole fits (steps and the rest): median of the pair ratios {med(whole):.3f}", flush=True)
        with open(report, "w") as f:  # for the pooled lines of --launches
            json.dump({"ratios": ratios, "whole": whole}, f)
    # gloo may abort a process whose peer tears its connections down first ("terminate called without an active
    # exception"); after a plain barrier it still did now and then, after a monitored one (rank 0 hears from
    # every rank, then answers each) it did not in 20 runs, as at the end of surge's own runs
    dist.monitored_barrier()
    dist.destroy_process_group()


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=30)
    p.add_argument("--launches", type=int, default=1, help="start the processes this many times and pool their pairs")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--skip", type=int, default=3, help="the first batches of a fit, left out of its step time")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--aa", action="store_true", help="the plain loop on both sides (the instrument's own spread)")
    p.add_argument("--no-bind", action="store_true", help="leave the ranks' placement on the cores to the OS")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // WORLD), help="torch threads per process")
    a = p.parse_args()
    if not 0 <= a.skip < a.steps - 1:
        p.error(f"--skip must be at least 0 and below --steps - 1 ({a.steps - 1}), got {a.skip}")
    if a.pairs < 1 or a.launches < 1:
        p.error(f"--pairs and --launches must be at least 1, got --pairs {a.pairs} --launches {a.launches}")
    with tempfile.TemporaryDirectory() as folder:
        reports = []
        for launch in range(a.launches):
            if a.launches > 1:
                print(f"launch {launch + 1} of {a.launches}", flush=True)
            reports.append(os.path.join(folder, f"launch{launch}.json"))
            mp.start_processes(worker, args=(find_free_port(), a, reports[-1]), nprocs=WORLD, start_method="spawn")
        if a.launches > 1:
            launches = [_read_json(r) for r in reports]
            ratios = [x for one in launches for x in one["ratios"]]
            whole = [x for one in launches for x in one["whole"]]
            low, high = bootstrap_median(ratios)
            print(f"all {a.launches} launches, {len(ratios)} pairs: median of the pair ratios {statistics.median(ratios):.3f} "
                  f"(95% bootstrap interval {low:.3f}-{high:.3f}); per launch: "
                  + ", ".join(f"{statistics.median(one['ratios']):.3f}" for one in launches))
            print(f"all launches, whole fits: median of the pair ratios {statistics.median(whole):.3f}")


if __name__ == "__main__":
    main()
