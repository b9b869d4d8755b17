"""``surge.lightning.callbacks.throughput_monitor``: ``ThroughputMonitor`` is surge's own (:mod:`surge.callbacks.throughput`)."""
from ...callbacks.throughput import ThroughputMonitor

__all__ = ["ThroughputMonitor"]
