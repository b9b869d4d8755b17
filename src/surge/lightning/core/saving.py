"""``surge.lightning.core.saving``: reading and writing ``hparams.yaml`` (surge's own functions,
:mod:`surge.loggers.base`)."""
from ...loggers.base import load_hparams_from_yaml, save_hparams_to_yaml

__all__ = ["load_hparams_from_yaml", "save_hparams_to_yaml"]
