"""``surge.lightning.callbacks.progress``: the progress bars (``RichProgressBar`` loads rich when first named)."""
from .progress_bar import ProgressBar
from .tqdm_progress import TQDMProgressBar

__all__ = ["ProgressBar", "TQDMProgressBar", "RichProgressBar"]


def __getattr__(name: str):
    if name == "RichProgressBar":
        from .rich_progress import RichProgressBar

        globals()[name] = RichProgressBar
        return RichProgressBar
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
