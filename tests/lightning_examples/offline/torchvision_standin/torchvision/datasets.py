"""``torchvision.datasets`` offline stand-in (see the package docstring): MNIST without a download."""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

import numpy as np
import torch
from PIL import Image

__all__ = ["MNIST"]

_SHIFTS = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]  # 25 placements of each source digit


def _source_digits():
    """scikit-learn's 1797 handwritten 8x8 digits (values 0..16) and their labels, or, without
    scikit-learn, blocky generated glyphs (one fixed random 8x8 pattern per class plus noise)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        rng = np.random.default_rng(0)
        patterns = rng.integers(0, 17, size=(10, 8, 8))
        labels = np.arange(1797) % 10
        noise = rng.integers(-3, 4, size=(1797, 8, 8))
        return np.clip(patterns[labels] + noise, 0, 16), labels
    digits = load_digits()
    return digits.images, digits.target


class MNIST(torch.utils.data.Dataset):
    """Same call and items as torchvision's MNIST: ``MNIST(root, train=True, transform=None,
    target_transform=None, download=False)``; an item is ``(PIL grey image 28x28, int label)`` before the
    transforms. The training split has 60000 items and the test split 10000, as the real one, so scripts
    that split it by fixed sizes work. Nothing is read from or written to ``root``."""

    classes = [f"{d} - {name}" for d, name in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])]

    def __init__(self, root: str, train: bool = True, transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None, download: bool = False) -> None:
        self.root = os.fspath(root)
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        images, labels = _source_digits()
        # Upscale 8x8 -> 24x24 once; each item places one of them, shifted, on a 28x28 black canvas.
        self._big = np.kron(images, np.ones((3, 3))) * (255.0 / 16.0)
        self._labels = labels
        self._length = 60000 if train else 10000
        # The test split starts elsewhere in the (source digit, shift) cycle, so it differs from training.
        self._offset = 0 if train else 7919
        self.targets = torch.tensor([int(labels[self._source(i)[0]]) for i in range(self._length)])

    def _source(self, index: int):
        k = index + self._offset
        return k % len(self._labels), _SHIFTS[(k // len(self._labels)) % len(_SHIFTS)]

    def _image(self, index: int) -> np.ndarray:
        src, (dy, dx) = self._source(index)
        canvas = np.zeros((28, 28), dtype=np.uint8)
        canvas[2 + dy:26 + dy, 2 + dx:26 + dx] = self._big[src].astype(np.uint8)
        return canvas

    @property
    def data(self) -> torch.Tensor:
        """All images as one uint8 tensor (N, 28, 28), as torchvision's ``MNIST.data`` (built on demand)."""
        return torch.from_numpy(np.stack([self._image(i) for i in range(self._length)]))

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img = Image.fromarray(self._image(int(index)), mode="L")
        target = int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target
