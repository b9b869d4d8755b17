"""``surge.lightning.callbacks.prediction_writer``: ``BasePredictionWriter`` and ``WriteInterval`` are surge's own
(:mod:`surge.callbacks.prediction_writer`)."""
from ...callbacks.prediction_writer import BasePredictionWriter, WriteInterval

__all__ = ["BasePredictionWriter", "WriteInterval"]
