"""DDP step against step: surge's step and a hand-written DDP step taken in turns, in the same two processes.

benchmarks/ddp_overhead.py times whole runs in alternating pairs, and on a shared 2-vCPU machine its pair
ratios spread over 0.8-1.4. Here the two steps alternate one by one inside one surge fit: at every
``on_train_batch_start`` a callback runs one step of a hand-written loop (its own DDP model, DistributedSampler
loader and SGD, the model and data of ddp_overhead.py), so a moment of load hits both alike. Per step it
records wall time and the main thread's CPU time (``time.thread_time``) of each side:

- the plain step: from entering the callback to the end of its optimizer step;
- the surge step: everything else, from the callback's end to its next start (the loop, hooks, the batch,
  ``training_step`` through DDP's forward, backward, the optimizer step; the callback's dispatch counts
  against surge).

``--mode`` picks what the surge side runs:

- ``surge``: surge's own fit loop (the comparison);
- ``aa-after`` / ``aa-before``: controls that replace surge's loop by the plain step itself, on a second
  model and loader, fetching its batch after the callback (``aa-after``, the plain step's own order) or
  before it (``aa-before``, the order a ``for batch in loader`` loop around a hook has). Both sides then do
  the same work: their ratio shows what the instrument itself adds.

Usage: python benchmarks/ddp_interleaved.py [--mode surge] [--reps 3] [--steps 800]
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddp_overhead as bench  # noqa: E402  (the model, data and surge module of the main benchmark)

import surge  # noqa: E402
from surge.fit_loop import FitLoop  # noqa: E402
from surge.launch import find_free_port  # noqa: E402

WORLD = 2


class PlainStep:
    """One hand-written DDP step per call: DistributedSampler loader, DDP, SGD."""

    def __init__(self, steps: int, width: int, batch: int) -> None:
        data = bench.dataset(steps + 1, batch)
        self.batches = iter(DataLoader(data, batch_size=batch, sampler=DistributedSampler(data, shuffle=True, seed=0)))
        self.model = DistributedDataParallel(bench.make(width))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01)

    def __call__(self, batch=None) -> None:
        x, y = next(self.batches) if batch is None else batch
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()


class Turns(surge.Callback):
    """Runs a plain step at each batch start; times it and the surge step between two of its calls."""

    def __init__(self, plain: PlainStep) -> None:
        self.plain_step = plain
        self.plain, self.ours, self.last = [], [], None  # (wall s, CPU s) per step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        t0, c0 = time.perf_counter(), time.thread_time()
        if self.last is not None:
            self.ours.append((t0 - self.last[0], c0 - self.last[1]))
        self.plain_step()
        self.last = time.perf_counter(), time.thread_time()
        self.plain.append((self.last[0] - t0, self.last[1] - c0))


def control_epoch(before: bool, width: int, batch_size: int):
    """A fit loop whose step is the plain step (a second model and loader): both sides then do the same work."""

    def epoch(self) -> None:
        n = self.num_training_batches
        twin = PlainStep(n + 1, width, batch_size)
        for i in range(n):
            batch = next(twin.batches) if before else None
            self._call("on_train_batch_start", batch, i)
            twin(batch)
        self._epoch_finished = True

    return epoch


def worker(rank: int, port: int, a) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    if a.mode != "surge":
        FitLoop._train_epoch = control_epoch(a.mode == "aa-before", a.width, a.batch)
    rows = []
    for _ in range(a.reps):
        turns = Turns(PlainStep(a.steps, a.width, a.batch))
        trainer = surge.Trainer(max_epochs=1, strategy="ddp", accelerator="cpu", devices=WORLD, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                callbacks=[turns])
        trainer.fit(bench.Net(a.width), DataLoader(bench.dataset(a.steps, a.batch), batch_size=a.batch, shuffle=True))
        plain, ours = turns.plain[10:], turns.ours[10:]  # the first steps warm up
        rows.append([statistics.mean(s[i] for s in side) * 1e6 for side in (plain, ours) for i in (0, 1)])
    if rank == 0:
        print(f"torch {torch.__version__}, {WORLD} processes x 1 thread, gloo, MLP width {a.width}, batch {a.batch}, "
              f"{a.steps} steps x {a.reps} fits, mode {a.mode}; rank 0, means per step")
        print("fit | plain wall us | surge-side wall us | ratio | plain CPU us | surge-side CPU us | ratio")
        for i, (pw, pc, sw, sc) in enumerate(rows):
            print(f"{i} | {pw:.0f} | {sw:.0f} | {sw / pw:.3f} | {pc:.0f} | {sc:.0f} | {sc / pc:.3f}")
    dist.monitored_barrier()  # gloo may abort a process whose peer tears down first (a plain barrier: now and then)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=("surge", "aa-after", "aa-before"), default="surge")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=256)
    a = p.parse_args()
    mp.start_processes(worker, args=(find_free_port(), a), nprocs=WORLD, start_method="spawn")


if __name__ == "__main__":
    main()
