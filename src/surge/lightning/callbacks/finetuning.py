"""``surge.lightning.callbacks.finetuning``: ``BaseFinetuning`` and ``BackboneFinetuning`` are surge's own
(:mod:`surge.callbacks.finetuning`)."""
from ...callbacks.finetuning import BackboneFinetuning, BaseFinetuning

__all__ = ["BaseFinetuning", "BackboneFinetuning"]
