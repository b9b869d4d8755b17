"""``surge.lightning.loggers.csv_logs``: ``CSVLogger`` is surge's own."""
from ...loggers.csv import CSVLogger

__all__ = ["CSVLogger"]
