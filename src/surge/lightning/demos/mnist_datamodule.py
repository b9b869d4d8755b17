"""``lightning.pytorch.demos.mnist_datamodule``: :mod:`surge.demos.mnist_datamodule` under Lightning's module path."""
from ...demos.mnist_datamodule import *  # noqa: F401,F403
from ...demos.mnist_datamodule import _DATASETS_PATH, _MNIST, __all__  # noqa: F401
