"""``surge.lightning.callbacks.model_summary``: ``ModelSummary`` is surge's own (:mod:`surge.callbacks.model_summary`)."""
from ...callbacks.model_summary import ModelSummary

__all__ = ["ModelSummary"]
