"""Small real models and data for the README, the command line, tests and bug reports.

``surge.demos.boring``: ``BoringModel``, ``BoringDataModule``, ``RandomDataset``... with the exact numbers
Lightning's tests and bug reports count on (also ``surge.lightning.demos.boring_classes``).
``surge.demos.toy``: ``ToyModel``, a tiny linear model that logs its losses, for surge's own tests.
``surge.demos.digits``: a convolutional classifier on scikit-learn's handwritten digits (the main demo).
``surge.demos.regression``: linear regression on generated data with known weights (the tutorials' first model).
``surge.demos.gpt``: a small character-level GPT trained on the Python standard library's own source.
``surge.demos.mnist``: MNIST-shaped data available offline, for examples written against torchvision's MNIST.

``BoringModel``, ``BoringDataModule`` and ``DemoModel`` are also names of this package, as of Lightning's
``lightning.pytorch.demos``.
"""
from .boring import BoringDataModule, BoringModel, DemoModel

__all__ = ["BoringModel", "BoringDataModule", "DemoModel"]
