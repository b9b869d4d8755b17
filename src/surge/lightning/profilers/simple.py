"""``surge.lightning.profilers.simple``: ``SimpleProfiler`` is :class:`surge.profiler.SimpleProfiler`."""
from ...profiler import SimpleProfiler

__all__ = ["SimpleProfiler"]
