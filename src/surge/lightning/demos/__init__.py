"""``lightning.pytorch.demos``: the models and data Lightning's tests, bug reports and examples use
(:mod:`surge.demos`): ``boring_classes``, ``transformer`` (``Transformer``, ``WikiText2``,
``LightningTransformer``) and ``mnist_datamodule`` (``MNIST``, ``MNISTDataModule``)."""
from ...demos import BoringDataModule, BoringModel, DemoModel
from ...demos.transformer import LightningTransformer, Transformer, WikiText2

__all__ = ["BoringModel", "BoringDataModule", "DemoModel", "LightningTransformer", "Transformer", "WikiText2"]
