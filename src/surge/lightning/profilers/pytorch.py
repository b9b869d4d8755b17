"""``surge.lightning.profilers.pytorch``: ``PyTorchProfiler`` is :class:`surge.profiler.PyTorchProfiler`."""
from ...profiler import PyTorchProfiler

__all__ = ["PyTorchProfiler"]
