"""``surge.lightning.callbacks.progress.tqdm_progress``: ``TQDMProgressBar`` is surge's own."""
from ....callbacks.progress import TQDMProgressBar

__all__ = ["TQDMProgressBar"]
