"""``surge.lightning.utilities.parsing``: ``AttributeDict`` is :class:`surge.hparams.AttributeDict` (``self.hparams``);
``lightning_hasattr`` / ``lightning_getattr`` / ``lightning_setattr`` find a hyperparameter on the module, its
``hparams``, the datamodule or its ``hparams`` (:func:`surge.tuner.has_hparam` and its two siblings)."""
from ...hparams import AttributeDict
from ...tuner import get_hparam as lightning_getattr
from ...tuner import has_hparam as lightning_hasattr
from ...tuner import set_hparam as lightning_setattr

__all__ = ["AttributeDict", "lightning_hasattr", "lightning_getattr", "lightning_setattr"]
