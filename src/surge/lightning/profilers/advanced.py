"""``surge.lightning.profilers.advanced``: ``AdvancedProfiler`` is :class:`surge.profiler.AdvancedProfiler`."""
from ...profiler import AdvancedProfiler

__all__ = ["AdvancedProfiler"]
