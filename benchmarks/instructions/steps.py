"""Run under callgrind by run.sh: counts the instructions of N1 and N2 training steps of the plain loop and of
surge, same process (one process: step_overhead.py's model; with RANK set: ddp_overhead.py's, under gloo).
Instructions per step = (count at N2 - count at N1) / (N2 - N1), so set-up and teardown cancel out."""
import ctypes
import os
import sys

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(here))
lib = ctypes.CDLL(os.environ["CGTOGGLE"]) if os.environ.get("RANK", "0") == "0" else None
torch.set_num_threads(1)
W, B = int(os.environ.get("W", 8)), int(os.environ.get("B", 2))
N1, N2 = int(os.environ.get("N1", 100)), int(os.environ.get("N2", 400))
if "RANK" in os.environ:
    import torch.distributed as dist
    import surge.preemption
    # surge agrees on the preemption flag with an all-reduce about every 0.5 s of training, the interval in
    # steps taken from the measured step time (blocking once a step takes 0.25 s or more). Under callgrind a
    # step runs 100-500x slower than natively, so the check would run at every step, blocking: an all-reduce
    # per step that a native run of this size (5-20 ms per step) pays only every 25-100 steps. Pin the check
    # to its native cadence for short steps: every 100 steps (its longest interval), not blocking.
    surge.preemption._CHECK_EVERY_S = surge.preemption._BLOCKING_STEP_S = 1e9
    import ddp_overhead as bench
    dist.init_process_group("gloo")
    barrier = dist.barrier
else:
    import step_overhead as bench
    barrier = lambda: None
for _ in range(2):  # warm-up of both sides
    bench.plain(20, B, W), bench.with_surge(20, B, W)
for name, fn in (("plain", bench.plain), ("surge", bench.with_surge)):
    for n in (N1, N2):
        barrier()
        if lib:
            lib.cg_start()
        fn(n, B, W)
        if lib:
            lib.cg_stop(f"{name}-{n}".encode())
if "RANK" in os.environ:
    barrier()
    dist.destroy_process_group()
