"""DeviceStatsMonitor: CPU, RAM and GPU memory / utilisation / temperature / power, every n steps."""
from __future__ import annotations

from typing import Optional

import torch

from ..utils import MisconfigurationError, rank_zero_warn
from .base import Callback

_GB = 1024 ** 3


class DeviceStatsMonitor(Callback):
    """Log what the machine is doing under ``device/...`` every ``every_n_steps`` training batches.

    * CPU and RAM (needs ``psutil``): ``device/cpu_percent`` (whole machine, since the last log),
      ``device/ram_used_percent``, ``device/process_rss_gb``.
    * GPU memory (torch's allocator counters, no device sync): ``device/gpu_mem_allocated_gb``,
      ``device/gpu_mem_reserved_gb``, ``device/gpu_mem_peak_gb`` (the peak since the previous log).
    * GPU utilisation, temperature and power when NVML is available (``pip install nvidia-ml-py``):
      ``device/gpu_util_percent``, ``device/gpu_temp_c``, ``device/gpu_power_w``. Without it, or
      with no driver, these are left out with one warning; nothing fails.

    Values are global rank 0's device (loggers write on rank 0). Between logs the callback costs
    one integer test per batch; it reads nothing from the device.

    Args:
        every_n_steps: log every n training batches (default: the Trainer's ``log_every_n_steps``).
        cpu_stats: log CPU/RAM (True: requires psutil; None: when psutil is installed; False: never).
        gpu_stats: log GPU stats when training on CUDA (False: never).

    Example::

        surge.Trainer(callbacks=[DeviceStatsMonitor(every_n_steps=10)])
    """

    def __init__(self, every_n_steps: Optional[int] = None, cpu_stats: Optional[bool] = None,
                 gpu_stats: bool = True) -> None:
        if every_n_steps is not None and (isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int)
                                          or every_n_steps < 1):
            raise MisconfigurationError(f"DeviceStatsMonitor(every_n_steps={every_n_steps!r}): must be an int >= 1 or None")
        self.every_n_steps = every_n_steps
        self.cpu_stats = cpu_stats
        self.gpu_stats = gpu_stats
        self.last_stats: dict[str, float] = {}
        self._psutil = None
        self._process = None
        self._every = 1
        self._device: Optional[torch.device] = None
        self._nvml_ok = True

    def setup(self, trainer, module, stage: str) -> None:
        if stage != "fit":
            return
        self._every = self.every_n_steps or trainer.log_every_n_steps or 1
        if self.cpu_stats is not False:
            try:
                import psutil
            except ImportError as err:
                if self.cpu_stats:
                    raise ImportError("DeviceStatsMonitor(cpu_stats=True) needs psutil: pip install psutil") from err
            else:
                self._psutil = psutil
                self._process = psutil.Process()
                psutil.cpu_percent(interval=None)  # the first call only starts the measurement window

    def on_train_start(self, trainer, module) -> None:
        device = trainer.strategy.root_device
        self._device = device if self.gpu_stats and device.type == "cuda" else None
        if self._device is not None:
            torch.cuda.reset_peak_memory_stats(self._device)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        if trainer.state.batches_seen % self._every:
            return
        stats = self.collect()
        if stats:
            self.last_stats = stats
            trainer._write_metrics(stats)

    def collect(self) -> dict[str, float]:
        """The current values (what the next log would write)."""
        stats: dict[str, float] = {}
        if self._psutil is not None:
            stats["device/cpu_percent"] = float(self._psutil.cpu_percent(interval=None))
            stats["device/ram_used_percent"] = float(self._psutil.virtual_memory().percent)
            stats["device/process_rss_gb"] = self._process.memory_info().rss / _GB
        if self._device is not None:
            stats.update(self._gpu_stats(self._device))
        return stats

    def _gpu_stats(self, device: torch.device) -> dict[str, float]:
        stats = {
            "device/gpu_mem_allocated_gb": torch.cuda.memory_allocated(device) / _GB,
            "device/gpu_mem_reserved_gb": torch.cuda.memory_reserved(device) / _GB,
            "device/gpu_mem_peak_gb": torch.cuda.max_memory_allocated(device) / _GB,
        }
        torch.cuda.reset_peak_memory_stats(device)
        if self._nvml_ok:
            # torch's wrappers map the CUDA index to NVML's (CUDA_VISIBLE_DEVICES) and import pynvml.
            try:
                stats["device/gpu_util_percent"] = float(torch.cuda.utilization(device))
                stats["device/gpu_temp_c"] = float(torch.cuda.temperature(device))
                stats["device/gpu_power_w"] = torch.cuda.power_draw(device) / 1000.0  # mW
            except Exception as err:  # no pynvml, no driver library, a GPU that does not report
                self._nvml_ok = False
                for key in ("device/gpu_util_percent", "device/gpu_temp_c", "device/gpu_power_w"):
                    stats.pop(key, None)
                rank_zero_warn(f"DeviceStatsMonitor: GPU utilisation/temperature/power are not logged: NVML is not "
                               f"available ({type(err).__name__}: {err}); pip install nvidia-ml-py")
        return stats
