"""``surge.lightning.profilers.profiler``: the base ``Profiler`` and ``PassThroughProfiler`` are surge's own
(:mod:`surge.profiler`)."""
from ...profiler import PassThroughProfiler, Profiler

__all__ = ["Profiler", "PassThroughProfiler"]
