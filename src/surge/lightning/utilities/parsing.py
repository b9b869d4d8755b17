"""``surge.lightning.utilities.parsing``: ``AttributeDict`` is :class:`surge.hparams.AttributeDict` (``self.hparams``)."""
from ...hparams import AttributeDict

__all__ = ["AttributeDict"]
