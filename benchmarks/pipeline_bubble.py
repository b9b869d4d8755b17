"""Pipeline bubble of surge's pipeline strategy against torch.distributed.pipelining used by hand, measured inside
the real schedules, for GPipe and 1F1B, next to the theory (p-1)/(m+p-1).

    python benchmarks/pipeline_bubble.py [--microbatches 1 2 4 8] [--rounds 5] [--steps 15]

Two processes (gloo, one thread each) are started here and create one process group. In them, for each
schedule and m, ``surge.Trainer(strategy=Pipeline(schedule, microbatches=m))`` and a hand-written loop over
torch's ``PipelineStage`` + ``ScheduleGPipe`` / ``Schedule1F1B`` (same blocks, same split, same batches, SGD)
run one after the other, ``--rounds`` times, the side that goes first alternating.

The model's body is an ``nn.Sequential`` of equal blocks (Linear + tanh), so surge's split by parameter
count is the hand-made one (checked: each rank reports which blocks ran on it). Busy time is what the
stage's blocks compute, timed inside the running schedule by hooks on every block: forward pre/post hooks
and full backward pre/post hooks (the first block of the first stage is made to take its input's
gradient, as the first block of every later stage must, so its backward hook fires at the end of its
backward and the stages do the same work). A step is the time from one batch's start to the next's
(optimizer step, loss, logging and the loop included: whatever a stage spends outside its blocks is bubble).
Per stage and step, bubble = 1 - busy / step; a run's bubble is the mean over its steps after the warm-up,
and a table entry the median over the rounds. Load from other work slows a run's steps and blocks alike,
so it shows in a bubble only as far as it hits waiting more than computing; and since a round runs both
sides back to back, the comparison is paired: diff = the median over the rounds of (surge - torch) at the
stage where surge is worse, in percentage points of the step. "Within 5%" means diff <= 5 points.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

P = 2            # stages = processes
BLOCKS = 8       # blocks of the body: BLOCKS / P per stage
WARMUP = 3       # steps left out at the start of each run (the first also infers shapes)


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x):
        return torch.tanh(self.linear(x))


def make_body(width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[Block(width) for _ in range(BLOCKS)])


class Meter:
    """Compute intervals (perf_counter start, end) of the blocks it watches, forward and backward, and the
    indices of the blocks that ran. Blocks run one at a time on this process's one thread, so one open
    interval at a time is enough."""

    def __init__(self, blocks: nn.Sequential) -> None:
        self.intervals: list = []
        self.ran: set = set()
        self._start = 0.0
        for index, block in enumerate(blocks):
            block.register_forward_pre_hook(self._pre(index))
            block.register_forward_hook(self._post)
            block.register_full_backward_pre_hook(self._backward_pre)
            block.register_full_backward_hook(self._backward_post)

    def _pre(self, index: int):
        def hook(module, args):
            self.ran.add(index)
            x = args[0]
            if torch.is_grad_enabled() and not x.requires_grad:
                # The first stage's input: let its first block take the input gradient too, so that its full
                # backward hook closes the interval at the end of its backward (not at the start).
                x = x.detach().requires_grad_()
            self._start = time.perf_counter()
            return (x,)
        return hook

    def _post(self, module, args, output):
        self.intervals.append((self._start, time.perf_counter()))

    def _backward_pre(self, module, grad_output):
        self._start = time.perf_counter()

    def _backward_post(self, module, grad_input, grad_output):
        self.intervals.append((self._start, time.perf_counter()))

    def busy(self, t0: float, t1: float) -> float:
        return sum(max(0.0, min(e, t1) - max(s, t0)) for s, e in self.intervals)


def per_step(meter: Meter, starts: list) -> list:
    """(bubble, step seconds, busy seconds) of each step after the warm-up; a step lasts from its batch's
    start to the next batch's (so the last batch of a run, which has no next, is left out)."""
    rows = []
    for t0, t1 in zip(starts[WARMUP:-1], starts[WARMUP + 1:]):
        busy = meter.busy(t0, t1)
        rows.append((1.0 - busy / (t1 - t0), t1 - t0, busy))
    return rows


def dataset(a, m: int) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    n = (WARMUP + a.steps + 1) * m * a.rows
    return TensorDataset(torch.randn(n, a.width, generator=g), torch.randn(n, a.width, generator=g))


def run_surge(a, schedule: str, m: int):
    import surge
    from surge.strategies import Pipeline

    class Chain(surge.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = make_body(a.width)

        def forward(self, x):
            return self.body(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.mse_loss(self(x), y)
            self.log("loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    class Marks(surge.Callback):
        def __init__(self) -> None:
            self.starts: list = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.starts.append(time.perf_counter())

    module, marks = Chain(), Marks()
    meter = Meter(module.body)
    trainer = surge.Trainer(strategy=Pipeline(schedule=schedule, microbatches=m), accelerator="cpu", devices=P,
                            max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[marks])
    trainer.fit(module, DataLoader(dataset(a, m), batch_size=m * a.rows))
    return per_step(meter, marks.starts), sorted(meter.ran)


def run_torch(a, schedule: str, m: int, rank: int, blocks: list):
    """The loop one writes with torch.distributed.pipelining alone, this rank holding ``blocks`` of the body."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    body = make_body(a.width)
    meter = Meter(body)
    stage_module = nn.Sequential(*[body[i] for i in blocks])
    stage = PipelineStage(stage_module, rank, P, torch.device("cpu"))
    cls = {"GPipe": ScheduleGPipe, "1F1B": Schedule1F1B}[schedule]
    pipe = cls(stage, n_microbatches=m, loss_fn=F.mse_loss)
    optimizer = torch.optim.SGD(stage_module.parameters(), lr=1e-3)
    starts = []
    for x, y in DataLoader(dataset(a, m), batch_size=m * a.rows):
        starts.append(time.perf_counter())
        if rank == 0:
            pipe.step(x)
        else:
            losses: list = []
            pipe.step(target=y, losses=losses)
        optimizer.step()
        optimizer.zero_grad()
    return per_step(meter, starts), sorted(meter.ran)


def runs(schedule: str, m: int) -> bool:
    return schedule == "GPipe" or m >= P  # torch's Schedule1F1B refuses fewer micro-batches than stages


def worker(rank: int, port: int, a) -> None:
    # What torchrun would set: surge reads it and finds the process group created here.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(P), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=P)
    began = time.perf_counter()
    hand_split = list(range(rank * BLOCKS // P, (rank + 1) * BLOCKS // P))  # the split made by hand
    results = {}  # (schedule, m, side) -> per round, its per-step rows
    for schedule in a.schedules:
        for m in a.microbatches:
            if not runs(schedule, m):
                continue
            results[schedule, m, "surge"], results[schedule, m, "torch"] = [], []
            for r in range(a.rounds):
                for side in (("surge", "torch") if r % 2 == 0 else ("torch", "surge")):
                    if side == "surge":
                        rows, ran = run_surge(a, schedule, m)
                    else:
                        rows, ran = run_torch(a, schedule, m, rank, hand_split)
                    assert ran == hand_split, f"{side} ran blocks {ran} on rank {rank}, not {hand_split}"
                    results[schedule, m, side].append(rows)
    everyone = [None] * P if rank == 0 else None
    dist.gather_object((results, hand_split), everyone, dst=0)
    if rank == 0:
        report(a, everyone, time.perf_counter() - began)
    dist.monitored_barrier()  # gloo may abort a process whose peer tears down first (a plain barrier: now and then)
    dist.destroy_process_group()


def report(a, everyone: list, seconds: float) -> None:
    mean, median = statistics.fmean, statistics.median
    print(f"p={P} processes (gloo, 1 thread each), torch {torch.__version__}, body {BLOCKS} x Linear({a.width})+tanh, "
          f"blocks per rank {[blocks for _, blocks in everyone]}, {a.rows} rows per micro-batch, "
          f"{a.rounds} rounds x {a.steps} steps after {WARMUP} warm-up, surge and torch alternating; {seconds:.0f} s")
    print("bubble = 1 - busy/step of a stage, mean over a run's steps, median over the rounds; diff = median over the "
          "rounds of max over stages (surge - torch), in percentage points; within 5%: diff <= 5.0 points")
    for schedule in a.schedules:
        print(f"\n{schedule}")
        print(f"{'m':>3} {'theory':>6} | {'surge s0':>8} {'s1':>6} | {'torch s0':>8} {'s1':>6} | "
              f"{'surge ms':>8} {'torch ms':>8} {'ratio':>6} | {'busy ms s/t':>11} | {'diff':>5}  within 5%")
        for m in a.microbatches:
            if not runs(schedule, m):
                print(f"{m:>3} {(P - 1) / (m + P - 1):>6.3f} | not run: torch's Schedule1F1B needs m >= {P} stages "
                      f"(ValueError, with surge's Pipeline too)")
                continue
            # per side, rank and round: (bubble, step seconds, busy seconds), each the mean over the run's steps
            runs_of = {side: [[tuple(mean(row[k] for row in rows) for k in range(3)) for rows in results[schedule, m, side]]
                              for results, _ in everyone] for side in ("surge", "torch")}
            bubble = {side: [median(r[0] for r in rounds) for rounds in per_rank] for side, per_rank in runs_of.items()}
            step_ms = {side: 1000 * max(median(r[1] for r in rounds) for rounds in per_rank)
                       for side, per_rank in runs_of.items()}
            busy_ms = {side: 1000 * max(median(r[2] for r in rounds) for rounds in per_rank)
                       for side, per_rank in runs_of.items()}
            diffs = [max(s[k][0] - t[k][0] for s, t in zip(runs_of["surge"], runs_of["torch"]))
                     for k in range(a.rounds)]
            diff = 100 * median(diffs)
            sb, tb = bubble["surge"], bubble["torch"]
            print(f"{m:>3} {(P - 1) / (m + P - 1):>6.3f} | {sb[0]:>8.3f} {sb[1]:>6.3f} | {tb[0]:>8.3f} {tb[1]:>6.3f} | "
                  f"{step_ms['surge']:>8.2f} {step_ms['torch']:>8.2f} {step_ms['surge'] / step_ms['torch']:>6.3f} | "
                  f"{busy_ms['surge']:>5.2f}/{busy_ms['torch']:<5.2f} | {diff:>+5.1f}  {'yes' if diff <= 5.0 else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--microbatches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--schedules", nargs="+", default=["GPipe", "1F1B"], choices=["GPipe", "1F1B"])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each side per (schedule, m)")
    parser.add_argument("--steps", type=int, default=15, help="measured steps per run")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--rows", type=int, default=32, help="rows per micro-batch")
    a = parser.parse_args()
    from surge.launch import find_free_port

    mp.start_processes(worker, args=(find_free_port(), a), nprocs=P, start_method="spawn")


if __name__ == "__main__":
    main()
