"""MNIST-shaped data that is there offline, for examples written against torchvision's MNIST.

Tutorial code loads MNIST through torchvision, which downloads it. Where torchvision and the MNIST
files are present the examples keep that code; elsewhere (CI, an offline machine) they call
:func:`offline_mnist`, which gives scikit-learn's handwritten digits drawn at MNIST's size, or, without
scikit-learn, digit-like images it generates. Either way a line says which data the script uses.

Example::

    from surge.demos.mnist import offline_mnist, use_torchvision_mnist

    if use_torchvision_mnist("./data"):
        train_set = torchvision.datasets.MNIST("./data", train=True, transform=...)
    else:
        train_set = offline_mnist(train=True)        # TensorDataset of (1, 28, 28) images and labels
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ..utils import rank_zero_info

# What torchvision's MNIST leaves under <root>/MNIST/raw once it has downloaded and unpacked the set.
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_said: set[str] = set()


def _say(message: str) -> None:
    # Once per process and on rank 0 only: a script that builds its train and test sets, or runs
    # on several processes, still prints one line.
    if message not in _said:
        _said.add(message)
        rank_zero_info(message)


def mnist_files_exist(root: str = "./data") -> bool:
    """Whether torchvision's MNIST files are unpacked under ``root/MNIST/raw``."""
    raw = os.path.join(root, "MNIST", "raw")
    return all(os.path.isfile(os.path.join(raw, name)) for name in MNIST_FILES)


def use_torchvision_mnist(root: str = "./data") -> bool:
    """True (and says so) when torchvision is installed and MNIST is already under ``root``.

    Examples check this instead of letting torchvision download: a machine without network would
    otherwise wait on the download and fail.
    """
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    if not mnist_files_exist(root):
        return False
    _say(f"data: MNIST from {root} (torchvision)")
    return True


def offline_mnist(train: bool = True, mean: float = 0.5, std: float = 0.5, seed: int = 0) -> TensorDataset:
    """MNIST-shaped data available offline: ``(N, 1, 28, 28)`` float images and int64 labels 0-9.

    scikit-learn's 1,797 8x8 handwritten digits, each scaled to 20x20 and centred on a 28x28 canvas
    the way MNIST's digits are; a fixed 1,500 of them are the training set and the other 297 the test
    set. Without scikit-learn, noisy copies of ten fixed random patterns (60,000/10,000 would be
    slow on a CPU, so 1,500/300). Pixels are normalised like ``transforms.Normalize((mean,), (std,))``
    after ``ToTensor`` (which maps them to [0, 1]).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        load_digits = None
    if load_digits is not None:
        x, y = load_digits(return_X_y=True)
        images = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        images = F.pad(F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False), (4, 4, 4, 4))
        labels = torch.tensor(y, dtype=torch.long)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        keep = order[:1500] if train else order[1500:]
        images, labels = images[keep].clamp(0, 1), labels[keep]
        _say("data: scikit-learn's handwritten digits drawn at 28x28 (MNIST files or torchvision not found)")
    else:
        gen = torch.Generator().manual_seed(seed)
        patterns = (torch.rand(10, 1, 28, 28, generator=gen) > 0.7).float()
        gen.manual_seed(seed + (1 if train else 2))
        n = 1500 if train else 300
        labels = torch.randint(0, 10, (n,), generator=gen)
        images = (patterns[labels] + 0.3 * torch.randn(n, 1, 28, 28, generator=gen)).clamp(0, 1)
        _say("data: generated digit-like 28x28 patterns (no MNIST files, torchvision or scikit-learn found)")
    return TensorDataset((images - mean) / std, labels)
