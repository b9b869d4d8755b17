"""``surge.lightning.callbacks.progress.progress_bar``: the base ``ProgressBar`` is surge's own."""
from ....callbacks.progress import ProgressBar

__all__ = ["ProgressBar"]
