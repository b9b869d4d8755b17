"""Lightning's MNIST demo data (``lightning.pytorch.demos.mnist_datamodule``) on surge.

- :func:`MNIST` builds torchvision's ``MNIST`` when torchvision is installed (and ``$PL_USE_MOCKED_MNIST``
  is unset), else :class:`_MNIST`, the same images from the two files Lightning publishes
  (``<root>/MNIST/complete/training.pt`` and ``test.pt``, each ``(uint8 images N x 28 x 28, labels)``),
  downloaded there when missing and ``download=True``.
- :class:`MNISTDataModule`: 60000 training images split into ``len - val_split`` for training and
  ``val_split`` for validation (a fixed seed), the 10000 test images for testing; loaders with
  ``drop_last=True`` and ``pin_memory=True``, training shuffled. With torchvision the images go through
  ``ToTensor`` (then ``Normalize((0.5,), (0.5,))`` when ``normalize=True``).

Nothing is downloaded on import. Offline, torchvision's MNIST needs its files under ``root`` already;
:mod:`surge.demos.mnist` has MNIST-shaped data that needs none.
"""
from __future__ import annotations

import os
import urllib.request
from collections.abc import Sized
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, random_split

from ..datamodule import DataModule
from ..utils import rank_zero_info

__all__ = ["MNIST", "MNISTDataModule", "_MNIST", "_DATASETS_PATH"]

_DATASETS_PATH = "./data"
_MOCK_ENV = "PL_USE_MOCKED_MNIST"


def _torchvision_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


class _MNIST(Dataset):
    """MNIST from Lightning's two ``.pt`` files (no torchvision needed): an item is ``(1 x 28 x 28 float
    image, int label)``, the image ``(pixel - mean) / std`` with ``normalize=(mean, std)`` (pixels 0..255,
    as stored), or raw when ``normalize`` is None."""

    RESOURCES = ("https://pl-public-data.s3.amazonaws.com/MNIST/processed/training.pt",
                 "https://pl-public-data.s3.amazonaws.com/MNIST/processed/test.pt")
    TRAIN_FILE_NAME = "training.pt"
    TEST_FILE_NAME = "test.pt"
    cache_folder_name = "complete"

    def __init__(self, root: str, train: bool = True, normalize: Optional[tuple] = (0.1307, 0.3081),
                 download: bool = True, **kwargs: Any) -> None:
        super().__init__()
        self.root = os.fspath(root)
        self.train = train
        self.normalize = normalize
        self.prepare_data(download)
        name = self.TRAIN_FILE_NAME if train else self.TEST_FILE_NAME
        self.data, self.targets = torch.load(os.path.join(self.cached_folder_path, name))

    @property
    def cached_folder_path(self) -> str:
        return os.path.join(self.root, "MNIST", self.cache_folder_name)

    def _check_exists(self, folder: str) -> bool:
        return all(os.path.isfile(os.path.join(folder, n)) for n in (self.TRAIN_FILE_NAME, self.TEST_FILE_NAME))

    def prepare_data(self, download: bool = True) -> None:
        if download and not self._check_exists(self.cached_folder_path):
            self._download(self.cached_folder_path)
        if not self._check_exists(self.cached_folder_path):
            raise RuntimeError(f"Dataset not found: no {self.TRAIN_FILE_NAME} and {self.TEST_FILE_NAME} under "
                               f"{self.cached_folder_path}")

    def _download(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        for url in self.RESOURCES:
            rank_zero_info(f"Downloading {url}")
            urllib.request.urlretrieve(url, os.path.join(folder, os.path.basename(url)))  # noqa: S310

    @staticmethod
    def normalize_tensor(tensor: Tensor, mean: Union[int, float] = 0.0, std: Union[int, float] = 1.0) -> Tensor:
        return (tensor - mean) / std

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> tuple[Tensor, int]:
        img = self.data[idx].float().unsqueeze(0)
        if self.normalize is not None and len(self.normalize) == 2:
            img = self.normalize_tensor(img, *self.normalize)
        return img, int(self.targets[idx])


def MNIST(*args: Any, **kwargs: Any) -> Dataset:
    """torchvision's ``MNIST(*args, **kwargs)`` when torchvision is installed and ``$PL_USE_MOCKED_MNIST``
    is unset or empty; otherwise :class:`_MNIST` with the same arguments (and a line saying so)."""
    if _torchvision_available() and not os.environ.get(_MOCK_ENV):
        from torchvision.datasets import MNIST as TorchvisionMNIST

        return TorchvisionMNIST(*args, **kwargs)
    print("`torchvision.datasets.MNIST` not available. Using our hosted version")
    return _MNIST(*args, **kwargs)


class MNISTDataModule(DataModule):
    """MNIST's train / validation / test splits (see the module docstring)."""

    name = "mnist"

    def __init__(self, data_dir: str = _DATASETS_PATH, val_split: int = 5000, num_workers: int = 16,
                 normalize: bool = False, seed: int = 42, batch_size: int = 32) -> None:
        super().__init__()
        if num_workers and os.name == "nt":
            num_workers = 0  # worker processes are slow to start there; Lightning sets 0 as well
        self.data_dir = data_dir
        self.val_split = val_split
        self.num_workers = num_workers
        self.normalize = normalize
        self.seed = seed
        self.batch_size = batch_size

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def default_transforms(self) -> Optional[Callable]:
        """``ToTensor`` (and ``Normalize((0.5,), (0.5,))`` with ``normalize=True``) when torchvision is
        there; None otherwise (the ``.pt`` version gives tensors already)."""
        if not _torchvision_available():
            return None
        from torchvision import transforms

        if self.normalize:
            return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean=(0.5,), std=(0.5,))])
        return transforms.ToTensor()

    def _extra(self) -> dict:
        transform = self.default_transforms
        return {"transform": transform} if transform else {}

    def prepare_data(self) -> None:
        MNIST(self.data_dir, train=True, download=True)
        MNIST(self.data_dir, train=False, download=True)

    def setup(self, stage: str) -> None:
        dataset = MNIST(self.data_dir, train=True, download=False, **self._extra())
        assert isinstance(dataset, Sized)
        self.dataset_train, self.dataset_val = random_split(
            dataset, [len(dataset) - self.val_split, self.val_split], generator=torch.Generator().manual_seed(self.seed))

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          drop_last=True, pin_memory=True)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(MNIST(self.data_dir, train=False, download=False, **self._extra()), shuffle=False)
