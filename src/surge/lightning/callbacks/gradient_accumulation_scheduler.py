"""``surge.lightning.callbacks.gradient_accumulation_scheduler``: ``GradientAccumulationScheduler`` is surge's own
(:mod:`surge.callbacks.gradient_accumulation`)."""
from ...callbacks.gradient_accumulation import GradientAccumulationScheduler

__all__ = ["GradientAccumulationScheduler"]
