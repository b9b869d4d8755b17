"""What surge's fit loop itself costs per step, in microseconds: a model of one scalar parameter trained on
pre-made batches (no DataLoader, no real compute), so that the difference between ``Trainer.fit`` and the
hand-written loop is the framework's Python alone (hooks, ``self.log``, the NaN check, bookkeeping).

The plain loop and ``Trainer.fit`` alternate in the same process; medians are printed.
Usage: OMP_NUM_THREADS=1 python benchmarks/loop_overhead.py [--rounds 9] [--steps 3000]
"""
import argparse
import statistics
import time
import warnings

import torch

import surge


class Batches:
    """``steps`` ready-made (x, y) pairs: iterating costs nothing, and the Trainer can take its length."""

    def __init__(self, steps: int) -> None:
        self.items = [(torch.ones(1), torch.ones(1)) for _ in range(steps)]

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def plain(batches: Batches) -> float:
    w = torch.nn.Parameter(torch.ones(()))
    opt = torch.optim.SGD([w], lr=0.0)
    t = time.perf_counter()
    for x, _ in batches:
        loss = (w * x).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return (time.perf_counter() - t) / len(batches)


class OneParameter(surge.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def training_step(self, batch, batch_idx):
        x, _ = batch
        loss = (self.w * x).sum()
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


class Timer(surge.Callback):
    def on_train_start(self, trainer, module) -> None:
        self.t = time.perf_counter()

    def on_train_end(self, trainer, module) -> None:
        self.elapsed = time.perf_counter() - self.t


def with_surge(batches: Batches) -> float:
    timer = Timer()
    trainer = surge.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(OneParameter(), batches)
    return timer.elapsed / len(batches)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=3000)
    a = p.parse_args()
    warnings.filterwarnings("ignore", message=".*num_workers.*")  # pre-made batches: no workers to add
    batches = Batches(a.steps)
    plain(batches), with_surge(batches)  # warm-up
    times: dict = {"plain": [], "surge": []}
    for _ in range(a.rounds):
        times["plain"].append(plain(batches))
        times["surge"].append(with_surge(batches))
    p_us, s_us = (statistics.median(times[k]) * 1e6 for k in ("plain", "surge"))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {a.steps} steps x {a.rounds} rounds")
    print(f"plain loop   {p_us:8.1f} us/step")
    print(f"surge fit    {s_us:8.1f} us/step")
    print(f"surge adds   {s_us - p_us:8.1f} us/step (ratio {s_us / p_us:.3f})")


if __name__ == "__main__":
    main()
