"""``lightning.pytorch.demos``: the models and data Lightning's tests and bug reports use (:mod:`surge.demos`)."""
from ...demos import BoringDataModule, BoringModel, DemoModel

__all__ = ["BoringModel", "BoringDataModule", "DemoModel"]
