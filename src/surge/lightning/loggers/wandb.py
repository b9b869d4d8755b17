"""``surge.lightning.loggers.wandb``: Lightning's ``WandbLogger`` is surge's own."""
from ...loggers.wandb import WandbLogger

__all__ = ["WandbLogger"]
