"""Where a DDP step's time goes: surge's ddp against the hand-written DDP loop, part by part.

The same 2 CPU processes and gloo group as ``ddp_overhead.py`` (its model, data and loop). Each step is
cut into parts by timestamps (the plain loop: around each line; surge: in its hooks), and each phase
also reads every thread's CPU time from ``/proc/self/task``, so waiting and working can be told apart.
Printed on rank 0: the median of each part over all steps, the sum of those medians, the median skew
between the ranks' backward starts, and the CPU seconds per thread and phase.
Usage: python benchmarks/ddp_step_segments.py [--pairs 6] [--steps 200] [--batch 64] [--width 256]
"""
import argparse
import os
import statistics
import sys
import threading
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
from surge.launch import find_free_port  # noqa: E402

now = time.perf_counter
PLAIN_PARTS = ["between steps (next batch)", "forward + loss", "backward (+ all-reduce)", "optimizer.step", "zero_grad"]
SURGE_PARTS = ["between steps (next batch, loop)", "batch start -> training_step", "training_step",
               "-> on_before_backward (zero_grad, checks)", "backward (+ all-reduce)", "-> optimizer step",
               "optimizer step -> batch end"]


def thread_cpu() -> dict:
    """CPU seconds (user + system) of each thread of this process, by thread name. /proc counts in clock ticks
    (10 ms): the calling thread, which runs the steps, is read with time.thread_time() instead (nanoseconds),
    so that a short run still shows its work."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    me = str(threading.get_native_id())
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        seconds = time.thread_time() if tid == me else (int(fields[11]) + int(fields[12])) / ticks
        out[name] = out.get(name, 0.0) + seconds
    return out


def plain(steps, batch, width):
    data = bench.dataset(steps, batch)
    loader = DataLoader(data, batch_size=batch, sampler=DistributedSampler(data, shuffle=True, seed=0))
    model = DistributedDataParallel(bench.make(width))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    dist.barrier()
    rows, starts, end = [], [], now()
    for x, y in loader:
        t0 = now()
        loss = F.cross_entropy(model(x), y)
        t1 = now()
        loss.backward()
        t2 = now()
        opt.step()
        t3 = now()
        opt.zero_grad()
        t4 = now()
        rows.append((t0 - end, t1 - t0, t2 - t1, t3 - t2, t4 - t3))
        starts.append(t1)
        end = t4
    return rows, starts


class Probe(surge.Callback):
    def __init__(self):
        self.rows, self.starts, self.t = [], [], {}

    def on_train_start(self, trainer, module):
        trainer.strategy.barrier()
        self.t["end"] = now()
        module.probe_times = self.t

    def on_train_batch_start(self, *args):
        self.t["batch"] = now()

    def on_before_backward(self, *args):
        self.t["backward"] = now()

    def on_after_backward(self, *args):
        self.t["after"] = now()

    def on_before_optimizer_step(self, *args):
        self.t["opt"] = now()

    def on_train_batch_end(self, *args):
        t, end = self.t, now()
        self.rows.append((t["batch"] - t["end"], t["step0"] - t["batch"], t["step1"] - t["step0"],
                          t["backward"] - t["step1"], t["after"] - t["backward"], t["opt"] - t["after"],
                          end - t["opt"]))
        self.starts.append(t["backward"])
        t["end"] = end


class TimedNet(bench.Net):
    def training_step(self, batch, batch_idx):
        self.probe_times["step0"] = now()
        loss = super().training_step(batch, batch_idx)
        self.probe_times["step1"] = now()
        return loss


def with_surge(steps, batch, width):
    probe = Probe()
    trainer = surge.Trainer(max_epochs=1, strategy="ddp", accelerator="cpu", devices=bench.WORLD, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[probe])
    trainer.fit(TimedNet(width), DataLoader(bench.dataset(steps, batch), batch_size=batch, shuffle=True))
    return probe.rows, probe.starts


def worker(rank: int, port: int, a) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(bench.WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", rank=rank, world_size=bench.WORLD)
    plain(30, a.batch, a.width), with_surge(30, a.batch, a.width)  # warm-up
    found = {"plain": ([], [], {}), "surge": ([], [], {})}
    for i in range(a.pairs):
        order = [("plain", plain), ("surge", with_surge)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            before = thread_cpu()
            rows, starts = fn(a.steps, a.batch, a.width)
            after = thread_cpu()
            found[name][0].extend(rows)
            found[name][1].extend(starts)
            cpu = found[name][2]
            for thread, seconds in after.items():
                cpu[thread] = cpu.get(thread, 0.0) + seconds - before.get(thread, 0.0)
    everyone = [None] * bench.WORLD
    dist.all_gather_object(everyone, {name: starts for name, (_, starts, _) in found.items()})
    if rank == 0:
        print(f"torch {torch.__version__}, {bench.WORLD} processes x {a.threads} thread(s), gloo, MLP width {a.width}, "
              f"batch {a.batch} per process, {a.steps} steps x {a.pairs} pairs; medians over all steps, rank 0")
        for name, parts in (("plain DDP loop", PLAIN_PARTS), ("surge ddp", SURGE_PARTS)):
            key = "plain" if name.startswith("plain") else "surge"
            rows, _, cpu = found[key]
            medians = [statistics.median(col) * 1e6 for col in zip(*rows)]
            skew = statistics.median(abs(x - y) * 1e6 for x, y in zip(*(e[key] for e in everyone)))
            print(f"\n{name}: sum of the part medians {sum(medians):.0f} us/step; ranks' backward starts "
                  f"{skew:.0f} us apart (median)")
            for part, m in zip(parts, medians):
                print(f"  {part:44s} {m:8.0f} us")
            steps = a.steps * a.pairs
            busy = ", ".join(f"{t} {s / steps * 1e6:.0f}" for t, s in sorted(cpu.items(), key=lambda kv: -kv[1]) if s > 0)
            print(f"  CPU time per step, by thread (us): {busy}")
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // bench.WORLD))
    a = p.parse_args()
    mp.start_processes(worker, args=(find_free_port(), a), nprocs=bench.WORLD, start_method="spawn")


if __name__ == "__main__":
    main()
