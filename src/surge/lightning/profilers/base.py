"""``surge.lightning.profilers.base``: ``PassThroughProfiler`` (:mod:`surge.profiler`)."""
from ...profiler import PassThroughProfiler

__all__ = ["PassThroughProfiler"]
