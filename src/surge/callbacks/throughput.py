"""ThroughputMonitor: batches/s, samples/s, tokens/s, FLOPs and MFU, and how long training waits for data."""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

import torch

from ..utils import MisconfigurationError, rank_zero_warn
from .base import Callback

# Dense peak throughput in TFLOP/s (no 2:4 sparsity) from NVIDIA's datasheets, by a lower-case piece of
# torch.cuda.get_device_name(). First match wins, so longer names come before their prefixes
# ("h100 pcie" before "h100", "l40s" before "l40" before "l4"). A dtype a device has no tensor-core
# path for (bf16 on V100/T4) is missing on purpose: no MFU is better than a wrong one.
DEVICE_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("h100 nvl", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("h100 pcie", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    ("h100", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM5: "NVIDIA H100 80GB HBM3"
    ("h200 nvl", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("h200", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM, and GH200
    ("a100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),  # SXM4 and PCIe
    ("l40s", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6}),
    ("l40", {"bf16": 181.05, "fp16": 181.05, "tf32": 90.5, "fp32": 90.5}),
    ("l4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("v100", {"fp16": 125.0, "fp32": 15.7}),  # SXM2 (PCIe: 112 / 14)
    ("t4", {"fp16": 65.0, "fp32": 8.1}),
    ("rtx 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    ("rtx 3090", {"bf16": 71.0, "fp16": 71.0, "tf32": 35.6, "fp32": 35.6}),
]

_PRECISION_DTYPE = {"bf16-mixed": "bf16", "bf16-true": "bf16", "16-mixed": "fp16", "16-true": "fp16"}


def matmul_dtype(precision: str) -> Optional[str]:
    """The dtype the matmuls of a run with this ``precision`` use: "bf16", "fp16", "tf32", "fp32" or None."""
    if precision in _PRECISION_DTYPE:
        return _PRECISION_DTYPE[precision]
    if precision == "32-true":
        tf32 = torch.get_float32_matmul_precision() != "highest" or torch.backends.cuda.matmul.allow_tf32
        return "tf32" if tf32 else "fp32"
    return None  # 64-true: no table for fp64


def device_peak_flops(device_name: str, dtype: str) -> Optional[float]:
    """Dense peak FLOP/s of one device for ``dtype`` ("bf16", "fp16", "tf32", "fp32"); None if unknown.

    Example: ``device_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989.4e12``.
    """
    name = device_name.lower()
    for key, peaks in DEVICE_PEAK_TFLOPS:
        if key in name:
            tflops = peaks.get(dtype)
            return tflops * 1e12 if tflops is not None else None
    return None


def _num_tokens(batch: Any) -> Any:
    if isinstance(batch, dict):
        return batch.get("num_tokens")
    return getattr(batch, "num_tokens", None)


class _TotalOnly:
    """Stands in for FlopCounterMode's module tracker: only the total is wanted here, and the tracker's
    autograd hooks on every module's inputs and outputs fail inside ``torch.autograd.grad`` (a pipeline
    schedule's first step, zero-bubble backward, a gradient penalty), which would end the run."""

    parents = {"Global"}  # where FlopCounterMode adds every count: what get_total_flops() sums

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


class ThroughputMonitor(Callback):
    """Log speed and efficiency every ``window`` training batches, and diagnose slow data loading.

    Per window (per rank; ``total_*`` multiply by the world size):

    * ``throughput/batches_per_sec``, ``throughput/samples_per_sec`` (and ``total_samples_per_sec``),
      ``throughput/tokens_per_sec`` (and ``total_...``) when ``tokens_fn`` is given or the batch has
      a ``num_tokens`` key or attribute.
    * ``throughput/flops_per_sec``, ``throughput/total_flops_per_sec`` and ``throughput/mfu`` (the
      fraction of the device's dense peak, from :data:`DEVICE_PEAK_TFLOPS` for the run's matmul
      dtype, or ``peak_flops``). FLOPs per batch are ``flops_per_batch`` if given, else counted once
      with ``torch.utils.flop_counter.FlopCounterMode`` over the whole second training batch (the first
      one warms up: lazy set-up, compilation, a pipeline schedule's shape inference, which runs an
      extra forward and backward), forward *and* backward as really run (not "3 x forward"); counted
      ops are matmuls, convolutions and attention, the usual MFU convention. A batch whose shapes vary
      (sequence length) needs ``flops_per_batch``; so does a model under ``torch.compile`` if counting
      fails (a warning says so).
    * ``time/data_wait_frac``: the share of the window spent between one batch's end and the next
      one's start, which is fetching the batch from the DataLoader and moving it to the device (plus
      the few other callbacks run there); ``time/data_wait_ms`` and ``time/batch_ms`` per batch.
      When waiting passes ``data_wait_warn_frac`` over a window a one-time warning names the fix.

    The first batch (warm-up) and the one whose FLOPs are counted are not timed; validation and epoch
    ends are left out of the windows. Times are host wall-clock; the device is synchronised once per window, at
    its end, never per batch.

    Args:
        window: batches per measurement (default: the Trainer's ``log_every_n_steps``).
        batch_size_fn: ``batch -> samples`` (default: the first dimension of the first tensor).
        tokens_fn: ``batch -> tokens`` (an int or a tensor; tensors are summed on device).
        flops_per_batch: FLOPs of one training batch (forward + backward) on one rank.
        measure_flops: count FLOPs on the second batch when ``flops_per_batch`` is not given.
        peak_flops: this device's peak FLOP/s for MFU (default: looked up from the device name).
        data_wait_warn_frac: warn once when waiting for data exceeds this share of a window.

    Example::

        surge.Trainer(callbacks=[ThroughputMonitor(tokens_fn=lambda b: b["input_ids"].numel())])
    """

    def __init__(self, window: Optional[int] = None, batch_size_fn: Optional[Callable[[Any], int]] = None,
                 tokens_fn: Optional[Callable[[Any], Any]] = None, flops_per_batch: Optional[float] = None,
                 measure_flops: bool = True, peak_flops: Optional[float] = None,
                 data_wait_warn_frac: float = 0.5) -> None:
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise MisconfigurationError(f"ThroughputMonitor(window={window!r}): must be an int >= 1 or None")
        if flops_per_batch is not None and not flops_per_batch > 0:
            raise MisconfigurationError(f"ThroughputMonitor(flops_per_batch={flops_per_batch!r}): must be > 0")
        if peak_flops is not None and not peak_flops > 0:
            raise MisconfigurationError(f"ThroughputMonitor(peak_flops={peak_flops!r}): must be > 0")
        self.window = window
        self.batch_size_fn = batch_size_fn
        self.tokens_fn = tokens_fn
        self.flops_per_batch = flops_per_batch
        self.measure_flops = measure_flops
        self.peak_flops = peak_flops
        self.data_wait_warn_frac = data_wait_warn_frac
        self.last_metrics: dict[str, float] = {}
        self._reset_run()

    def _reset_run(self) -> None:
        self._every = 1
        self._device: Optional[torch.device] = None
        self._world = 1
        self._counter = None
        self._measured = False
        self._warned = False
        # None until the first batch (warm-up: lazy set-up, compilation, shape inference) is done
        self._window_t0: Optional[float] = None
        self._last_end: Optional[float] = None  # when the previous batch ended: the data wait starts
        self._pause_t0: Optional[float] = None
        self._clear_window()

    def _clear_window(self) -> None:
        self._batches = 0
        self._samples = 0
        self._tokens: Any = None
        self._wait = 0.0
        self._excluded = 0.0

    # ------------------------------------------------------------------ run
    def setup(self, trainer, module, stage: str) -> None:
        if stage != "fit":
            return
        self._reset_run()
        self._every = self.window or trainer.log_every_n_steps or 1
        self._device = trainer.strategy.root_device
        self._world = trainer.world_size
        if self.peak_flops is None and self._device.type == "cuda":
            dtype = matmul_dtype(trainer.precision)
            name = torch.cuda.get_device_name(self._device)
            self.peak_flops = device_peak_flops(name, dtype) if dtype else None
            if self.peak_flops is None:
                rank_zero_warn(f"ThroughputMonitor: no peak FLOP/s known for {name!r} with {dtype} matmuls; MFU is "
                               f"not logged (pass peak_flops=...)")

    def on_train_epoch_start(self, trainer, module) -> None:
        now = time.perf_counter()
        if self._last_end is not None:  # epoch-end work (checkpoints, the epoch's logs) is not training time
            self._excluded += now - self._last_end
        self._last_end = now  # from here, creating the loader's iterator and the first fetch count as waiting

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._window_t0 is not None and self._last_end is not None:
            self._wait += now - self._last_end
        if self._window_t0 is not None and not self._measured and self.flops_per_batch is None and self.measure_flops:
            self._start_counting()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        counted = self._counter is not None
        if counted:
            self._stop_counting()
        if self._window_t0 is None or counted:  # warm-up, or the batch the FLOP counter slowed: not timed
            self._clear_window()
            self._window_t0 = self._last_end = time.perf_counter()
            return
        self._batches += 1
        self._samples += int(self.batch_size_fn(batch)) if self.batch_size_fn else _batch_size(batch)
        tokens = self.tokens_fn(batch) if self.tokens_fn else _num_tokens(batch)
        if tokens is not None:
            if isinstance(tokens, torch.Tensor):  # a collated per-sample count: sum it, on device (no sync)
                tokens = tokens.detach().sum()
            self._tokens = tokens if self._tokens is None else self._tokens + tokens
        if self._batches >= self._every:
            self._log_window(trainer)
        self._last_end = time.perf_counter()

    def on_validation_start(self, trainer, module) -> None:
        if trainer.state.stage == "fit" and self._window_t0 is not None:
            self._pause_t0 = time.perf_counter()

    def on_validation_end(self, trainer, module) -> None:
        if self._pause_t0 is not None:
            now = time.perf_counter()
            self._excluded += now - (self._last_end if self._last_end is not None else self._pause_t0)
            self._last_end = now  # the wait for the next batch starts after validation
            self._pause_t0 = None

    def on_train_epoch_end(self, trainer, module) -> None:
        # on_train_batch_start returning -1 ends the epoch before on_train_batch_end: do not leave
        # the FLOP counter switched on for the rest of the run.
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self._counter = None
            self._measured = False  # count again on the next batch

    def on_exception(self, trainer, module, exception) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self._counter = None

    # ------------------------------------------------------------------ measurements
    def _start_counting(self) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        self._measured = True
        try:
            counter = FlopCounterMode(display=False)
            counter.mod_tracker = _TotalOnly()
            counter.__enter__()
        except Exception as err:  # pragma: no cover - depends on the torch build
            rank_zero_warn(f"ThroughputMonitor: cannot count FLOPs ({err}); pass flops_per_batch=... for MFU")
            return
        self._counter = counter

    def _stop_counting(self) -> None:
        counter, self._counter = self._counter, None
        counter.__exit__(None, None, None)
        flops = counter.get_total_flops()
        if flops > 0:
            self.flops_per_batch = float(flops)
        else:
            rank_zero_warn("ThroughputMonitor: the FLOP counter saw no matmul, convolution or attention in the first "
                           "batch (a compiled model hides them); pass flops_per_batch=... for FLOPs and MFU")

    def _log_window(self, trainer) -> None:
        device = self._device
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)  # once per window: the time below includes the queued work
        elif device is not None and device.type == "mps":
            torch.mps.synchronize()
        now = time.perf_counter()
        elapsed = max(now - self._window_t0 - self._excluded, 1e-12)
        n, world = self._batches, self._world
        m = {
            "throughput/batches_per_sec": n / elapsed,
            "throughput/samples_per_sec": self._samples / elapsed,
            "throughput/total_samples_per_sec": world * self._samples / elapsed,
            "time/batch_ms": 1000 * elapsed / n,
            "time/data_wait_ms": 1000 * self._wait / n,
            "time/data_wait_frac": min(1.0, self._wait / elapsed),
        }
        if self._tokens is not None:
            tokens = float(self._tokens)
            m["throughput/tokens_per_sec"] = tokens / elapsed
            m["throughput/total_tokens_per_sec"] = world * tokens / elapsed
        if self.flops_per_batch:
            flops_per_sec = self.flops_per_batch * n / elapsed
            m["throughput/flops_per_sec"] = flops_per_sec
            m["throughput/total_flops_per_sec"] = world * flops_per_sec
            if self.peak_flops:
                m["throughput/mfu"] = flops_per_sec / self.peak_flops
        self.last_metrics = m
        trainer._write_metrics(m)
        if not self._warned and m["time/data_wait_frac"] > self.data_wait_warn_frac:
            self._warned = True
            rank_zero_warn(_data_wait_advice(trainer, m["time/data_wait_frac"], n))
        self._clear_window()
        self._window_t0 = time.perf_counter()


def _batch_size(batch: Any) -> int:
    from ..data import batch_size_of

    return batch_size_of(batch)


def _data_wait_advice(trainer, frac: float, n: int) -> str:
    loader = trainer.train_dataloader
    workers = getattr(loader, "num_workers", None)
    pinned = getattr(loader, "pin_memory", None)
    on_gpu = trainer.strategy.root_device.type == "cuda"
    cores = max(1, (os.cpu_count() or 2) // max(1, trainer.world_size))
    fixes = []
    if workers == 0:
        fixes.append(f"load batches in worker processes: DataLoader(..., num_workers={min(8, cores)}, "
                     f"persistent_workers=True) (it has num_workers=0)")
    elif workers is not None:
        fixes.append(f"more DataLoader workers (it has num_workers={workers}; this rank has ~{cores} cores), "
                     f"persistent_workers=True, a larger prefetch_factor")
    if on_gpu and pinned is False:
        fixes.append("pin_memory=True so host-to-GPU copies are asynchronous")
    fixes.append("make the dataset's __getitem__ / collate_fn cheaper (decode or tokenise ahead of time)")
    return (f"ThroughputMonitor: training waited for data {frac:.0%} of the time over the last {n} batches: the "
            f"data pipeline, not the model, limits speed. Fixes: " + "; ".join(fixes) + ".")
