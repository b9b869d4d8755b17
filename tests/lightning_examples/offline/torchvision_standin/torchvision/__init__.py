"""OFFLINE STAND-IN for torchvision, part of surge's tests (not torchvision, and not shipped with surge).

tests/lightning_api/test_lightning_examples.py puts the folder above this one on ``PYTHONPATH`` only when
the interpreter that runs Lightning's example scripts has no real torchvision (a real one needs a CUDA
torch build and network access to fetch MNIST, neither of which this project's test machines have).
It offers just what those scripts call:

- ``datasets.MNIST``: 60000 / 10000 grey 28x28 digits with labels, built in memory from scikit-learn's
  8x8 handwritten digits (scaled up and shifted), so nothing is downloaded;
- ``transforms.ToTensor`` / ``Normalize`` / ``Compose`` / ``Lambda``;
- ``utils.make_grid`` / ``utils.save_image`` (PNG through Pillow).
"""
from . import datasets, transforms, utils

__version__ = "0.0+surge.offline.standin"
__all__ = ["datasets", "transforms", "utils"]
