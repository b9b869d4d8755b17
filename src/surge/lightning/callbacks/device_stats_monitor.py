"""``surge.lightning.callbacks.device_stats_monitor``: ``DeviceStatsMonitor`` is surge's own (:mod:`surge.callbacks.device_stats`)."""
from ...callbacks.device_stats import DeviceStatsMonitor

__all__ = ["DeviceStatsMonitor"]
