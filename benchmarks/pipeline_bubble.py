"""Measured pipeline bubble (idle fraction per stage) of GPipe on CPU, against the theory (p-1)/(m+p-1).

Each of p processes (gloo, one thread each) holds one stage of equal cost: a stack of Linear+Tanh
layers. A stage's busy time per step is m times the forward+backward of one micro-batch measured
alone (no communication); its idle fraction is 1 - busy / (wall time of a schedule step).

    python benchmarks/pipeline_bubble.py --stages 2 --microbatches 1 2 4 8

Results on a shared, loaded CPU are noisy; communication time counts as idle here, so the measured
bubble sits above the theory when micro-batches are small.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

WIDTH, LAYERS, ROWS_PER_MB, STEPS = 512, 4, 64, 5


def stage_module() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*[m for _ in range(LAYERS) for m in (nn.Linear(WIDTH, WIDTH), nn.Tanh())])


def busy_per_microbatch(module: nn.Module, repeats: int = 10) -> float:
    x = torch.randn(ROWS_PER_MB, WIDTH, requires_grad=True)
    for _ in range(2):
        module(x).sum().backward()
    start = time.perf_counter()
    for _ in range(repeats):
        module(x).sum().backward()
    return (time.perf_counter() - start) / repeats


def worker(rank: int, p: int, microbatches: list[int], port: int, queue) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=p)
    module = stage_module()
    t_mb = busy_per_microbatch(module)
    for m in microbatches:
        stage = PipelineStage(module, rank, p, torch.device("cpu"))
        schedule = ScheduleGPipe(stage, n_microbatches=m, loss_fn=lambda out, tgt: out.pow(2).mean())
        x = torch.randn(m * ROWS_PER_MB, WIDTH)
        walls = []
        for i in range(STEPS + 1):
            dist.barrier()
            start = time.perf_counter()
            if rank == 0:
                schedule.step(x)
            elif rank == p - 1:
                schedule.step(target=x)
            else:
                schedule.step()
            if i:  # the first step also infers shapes
                walls.append(time.perf_counter() - start)
        wall = sorted(walls)[len(walls) // 2]
        queue.put((m, rank, 1 - m * t_mb / wall, wall))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--microbatches", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    from surge.launch import find_free_port

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = find_free_port()
    procs = [ctx.Process(target=worker, args=(r, args.stages, args.microbatches, port, queue)) for r in range(args.stages)]
    for proc in procs:
        proc.start()
    rows = [queue.get() for _ in range(args.stages * len(args.microbatches))]
    for proc in procs:
        proc.join()
    p = args.stages
    print(f"GPipe, p={p} stages, {LAYERS}x Linear({WIDTH}) per stage, {ROWS_PER_MB} rows per micro-batch, "
          f"torch {torch.__version__}, 1 thread per stage")
    print(f"{'m':>3} {'theory':>8} " + " ".join(f"{'stage ' + str(r):>8}" for r in range(p)) + f" {'step ms':>8}")
    for m in args.microbatches:
        by_rank = {r: (idle, wall) for mm, r, idle, wall in rows if mm == m}
        theory = (p - 1) / (m + p - 1)
        print(f"{m:>3} {theory:>8.3f} " + " ".join(f"{by_rank[r][0]:>8.3f}" for r in range(p))
              + f" {1000 * max(w for _, w in by_rank.values()):>8.1f}")


if __name__ == "__main__":
    main()
