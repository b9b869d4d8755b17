"""``surge.lightning.loggers.mlflow``: Lightning's ``MLFlowLogger`` is surge's ``MLflowLogger``."""
from ...loggers.mlflow import MLflowLogger as MLFlowLogger

__all__ = ["MLFlowLogger"]
