"""``surge.lightning.callbacks.stochastic_weight_avg``: ``StochasticWeightAveraging`` is surge's own
(:mod:`surge.callbacks.swa`)."""
from ...callbacks.swa import StochasticWeightAveraging

__all__ = ["StochasticWeightAveraging"]
