"""Per-step time of a tiny MLP on a GPU: plain loop vs surge vs surge with cuda_graphs=True vs Lightning (CUDA only).

The model (32 -> 256 -> 256 -> 2, batch 64) is launch-bound on any GPU: the step's time is Python and
kernel launches, not arithmetic, which is where a CUDA graph helps. Runs alternate in rounds in one
process; the medians are printed with their ratio to the plain loop, and each run's peak GPU memory.
The data lives on the GPU already (a list of device tensors), so the input pipeline is not what is
measured. Lightning (``lightning.pytorch`` or ``pytorch_lightning``) joins when installed.

``--json PATH`` writes the results for benchmarks/gpu_check.sh (also when there is no GPU: "needs CUDA").
A run that raises is reported as an error (the others still run) and makes the exit status 1; without
CUDA the script says "needs CUDA" and exits 0.

Usage: python benchmarks/cuda_graph.py [--pairs 5] [--steps 500] [--batch 64] [--width 256] [--json PATH]
"""
import argparse
import json
import os
import statistics
import sys
import time
import traceback

from cuda_probe import exit_if_no_cuda

NO_CUDA = ("measures CUDA graphs and none is available here "
           "(benchmarks/step_overhead.py is the CPU per-step benchmark)")


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--json", help="write the results to this file (for benchmarks/gpu_check.sh)")
    return p.parse_args()


if __name__ == "__main__":  # before torch's import (seconds): without CUDA the script is done in milliseconds
    _args = parse_args()
    exit_if_no_cuda("cuda_graph.py", _args.json, {"part": "mlp", "started": True, "pid": os.getpid(), "rows": []},
                    NO_CUDA)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from lightning_import import NOT_INSTALLED, import_lightning, lightning_label  # noqa: E402


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


def classes(module_base, callback_base):
    """The module and the timer written once, for surge or Lightning (the same code on both)."""

    class Net(module_base):
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

    class Timer(callback_base):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 1:  # after the first step: a CUDA graph is captured there
                torch.cuda.synchronize()
                self.t = time.perf_counter()

        def on_train_end(self, trainer, module):
            torch.cuda.synchronize()
            self.elapsed = time.perf_counter() - self.t

    return Net, Timer


def with_surge(data, width, cuda_graphs: bool) -> float:
    import surge

    Net, Timer = classes(surge.Module, surge.Callback)
    timer = Timer()
    trainer = surge.Trainer(max_epochs=1, accelerator="cuda", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
                            cuda_graphs=cuda_graphs)
    trainer.fit(Net(width), data)
    return timer.elapsed / (len(data) - 1)


def with_lightning(L, data, width) -> float:
    Net, Timer = classes(L.LightningModule, L.Callback)
    timer = Timer()
    trainer = L.Trainer(max_epochs=1, accelerator="gpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(Net(width), data)
    return timer.elapsed / (len(data) - 1)


def write(path, result) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)


def main() -> int:
    a = parse_args()
    result = {"part": "mlp", "started": True, "pid": os.getpid(), "torch": torch.__version__, "rows": []}
    print(f"cuda_graph.py: tiny MLP per step, torch {torch.__version__}", flush=True)
    if not torch.cuda.is_available():
        write(a.json, dict(result, status="needs CUDA", device="no CUDA device"))
        print(f"needs CUDA: cuda_graph.py {NO_CUDA} (torch sees no CUDA device)")
        return 0
    device = torch.device("cuda", 0)
    L = import_lightning()
    runs = {"plain loop": lambda d: plain(d, a.width, device), "surge fit": lambda d: with_surge(d, a.width, False),
            "surge cuda_graphs": lambda d: with_surge(d, a.width, True)}
    if L is not None:
        runs["lightning fit"] = lambda d: with_lightning(L, d, a.width)
    data = batches(a.steps, a.batch, device)
    failed = {}  # run -> why: a run that raises is reported as an error and left out of the next rounds
    for name, run in list(runs.items()):
        try:
            run(data[:50])  # warm-up: CUDA context, cuBLAS handles, the first graph capture
        except Exception as err:  # noqa: BLE001 - one broken run must not hide the others' numbers
            traceback.print_exc()
            failed[name] = f"{type(err).__name__}: {err}"[:300]
            del runs[name]
    times = {name: [] for name in runs}
    peaks = {name: 0 for name in runs}
    for _ in range(a.pairs):
        for name, run in list(runs.items()):
            torch.cuda.reset_peak_memory_stats(device)
            try:
                times[name].append(run(data))
            except Exception as err:  # noqa: BLE001
                traceback.print_exc()
                failed[name] = f"{type(err).__name__}: {err}"[:300]
                del runs[name], times[name]
                continue
            peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))
    base = statistics.median(times["plain loop"]) if "plain loop" in times else None
    name = torch.cuda.get_device_name(device)
    print(f"{name}, torch {torch.__version__}, MLP width {a.width}, batch {a.batch}, {a.steps} steps x {a.pairs} rounds")
    for run, ts in times.items():
        med = statistics.median(ts)
        ratio = med / base if base else None
        print(f"{run:<18} {med * 1e6:8.1f} us/step   ratio to plain {ratio if ratio is None else f'{ratio:.3f}'}   "
              f"peak {peaks[run] / 2**20:.0f} MiB")
        result["rows"].append({"run": run, "status": "ok", "us_per_step": med * 1e6, "ratio": ratio,
                               "peak_mem_mib": peaks[run] / 2**20})
    for run, why in failed.items():
        print(f"{run:<18} error: {why}")
        result["rows"].append({"run": run, "status": "error", "detail": why})
    if L is None:
        print(f"lightning fit: {NOT_INSTALLED}")
        result["rows"].append({"run": "lightning fit", "status": NOT_INSTALLED})
    else:
        result["lightning"] = lightning_label(L)
    write(a.json, dict(result, status="ok", device=name, config=vars(a)))
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main())
