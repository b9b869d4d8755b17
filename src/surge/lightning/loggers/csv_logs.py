"""``surge.lightning.loggers.csv_logs``: ``CSVLogger`` and its writer (``ExperimentWriter``: surge's
``CSVExperimentWriter``) are surge's own."""
from ...loggers.csv import CSVExperimentWriter as ExperimentWriter
from ...loggers.csv import CSVLogger

__all__ = ["CSVLogger", "ExperimentWriter"]
