"""``surge.lightning.callbacks.pruning``: ``ModelPruning`` is surge's own (:mod:`surge.callbacks.pruning`)."""
from ...callbacks.pruning import ModelPruning

__all__ = ["ModelPruning"]
