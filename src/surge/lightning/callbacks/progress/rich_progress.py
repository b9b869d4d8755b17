"""``surge.lightning.callbacks.progress.rich_progress``: ``RichProgressBar`` is surge's own (needs rich)."""
from ....callbacks.rich_progress import RichProgressBar

__all__ = ["RichProgressBar"]
