"""``surge.lightning.core.optimizer``: ``LightningOptimizer`` is what ``self.optimizers()`` returns,
surge's :class:`surge.optim.OptimizerHandle`."""
from ...optim import OptimizerHandle as LightningOptimizer

__all__ = ["LightningOptimizer"]
