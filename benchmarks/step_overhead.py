"""Per-step cost of surge's Trainer.fit against a plain PyTorch loop, same model, data and process.

The runs alternate so machine noise hits all alike; the ratio of medians is printed. When Lightning is
installed (`lightning` or `pytorch_lightning`), the same module under lightning.Trainer joins each round.
`--clock cpu` times with the process's CPU time (all its threads) instead of wall time: steadier when
other jobs share the cores, but blind to time spent waiting.
Usage: python benchmarks/step_overhead.py [--pairs 5] [--steps 400] [--batch 64] [--width 256] [--clock wall]
"""
import argparse
import logging
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge

try:
    import lightning as L
except ImportError:
    try:
        import pytorch_lightning as L
    except ImportError:
        L = None

clock = time.perf_counter  # main() switches it to time.process_time for --clock cpu


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
    t = clock()
    for x, y in data:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return (clock() - t) / steps


def classes(module_base, callback_base):
    """The benchmark's module and timer written once, for surge or Lightning (the same code on both)."""

    class Net(module_base):
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

    class Timer(callback_base):
        def on_train_start(self, trainer, module):
            self.t = clock()

        def on_train_end(self, trainer, module):
            self.elapsed = clock() - self.t

    return Net, Timer


def timed_fit(trainer_cls, module_base, callback_base, steps, batch, width) -> float:
    net_cls, timer_cls = classes(module_base, callback_base)
    timer = timer_cls()
    trainer = trainer_cls(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(net_cls(width), loader(steps, batch))
    return timer.elapsed / steps


def with_surge(steps, batch, width) -> float:
    return timed_fit(surge.Trainer, surge.Module, surge.Callback, steps, batch, width)


def with_lightning(steps, batch, width) -> float:
    return timed_fit(L.Trainer, L.LightningModule, L.Callback, steps, batch, width)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    a = p.parse_args()
    global clock
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    runs = {"plain loop": plain, "surge fit": with_surge}
    if L is not None:  # quiet Lightning's start-up messages and its "few workers" advice
        for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", module="(lightning|pytorch_lightning|lightning_fabric)[.]")
        runs["lightning fit"] = with_lightning
    for run in runs.values():
        run(50, a.batch, a.width)  # warm-up
    times = {name: [] for name in runs}
    for _ in range(a.pairs):
        for name, run in runs.items():
            times[name].append(run(a.steps, a.batch, a.width))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, MLP width {a.width}, batch {a.batch}, "
          f"{a.steps} steps x {a.pairs} pairs, {a.clock} clock")
    for name, m in med.items():
        print(f"{name:<14}{m * 1e6:8.1f} us/step")
    print(f"ratio surge/plain: {med['surge fit'] / med['plain loop']:.3f}")
    if L is None:
        print("Lightning: not installed (pip install lightning to add it to the comparison)")
    else:
        print(f"ratio lightning/plain: {med['lightning fit'] / med['plain loop']:.3f} ({L.__name__} {L.__version__})")


if __name__ == "__main__":
    main()
