"""``surge.lightning.callbacks.rich_model_summary``: ``RichModelSummary`` is surge's own
(:mod:`surge.callbacks.rich_model_summary`)."""
from ...callbacks.rich_model_summary import RichModelSummary

__all__ = ["RichModelSummary"]
