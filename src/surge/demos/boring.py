"""The fixtures Lightning's tests and bug reports are written against, with the behaviour they rely on.

Lightning's own test suite and many bug reports subclass ``BoringModel``: a ``Linear(32, 2)`` trained
towards ones with MSE, batches of one random vector, 64 of them per stage, ``training_step`` returning
``{"loss": ...}``, SGD at lr 0.1 with a ``StepLR``. Those numbers are what such code counts on (64
batches an epoch, 64 global steps...), so they are kept here exactly; the data come from the global
random stream, so ``seed_everything`` fixes them.

surge's own tests mostly use :mod:`surge.demos.toy`, which logs its losses and takes its sizes as arguments.
Under Lightning's names this module is ``surge.lightning.demos.boring_classes``.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from ..datamodule import DataModule
from ..module import Module

__all__ = ["RandomDataset", "RandomDictDataset", "RandomIterableDataset", "RandomIterableDatasetWithLen",
           "BoringModel", "BoringDataModule", "BoringDataModuleNoLen", "IterableBoringDataModule",
           "ManualOptimBoringModel", "DemoModel", "Net"]


class RandomDataset(Dataset):
    """``length`` vectors of ``size`` numbers drawn from the global random stream when it is built."""

    def __init__(self, size: int, length: int):
        self.len = length
        self.data = torch.randn(length, size)

    def __getitem__(self, index: int) -> Tensor:
        return self.data[index]

    def __len__(self) -> int:
        return self.len


class RandomDictDataset(RandomDataset):
    """As :class:`RandomDataset`, each item a dict: ``{"a": x, "b": x + 2}``."""

    def __getitem__(self, index: int) -> dict:
        a = self.data[index]
        return {"a": a, "b": a + 2}


class RandomIterableDataset(IterableDataset):
    """``count`` fresh random vectors of ``size`` numbers per pass, and no ``len()``."""

    def __init__(self, size: int, count: int):
        self.size, self.count = size, count

    def __iter__(self):
        return (torch.randn(self.size) for _ in range(self.count))


class RandomIterableDatasetWithLen(RandomIterableDataset):
    """As :class:`RandomIterableDataset`, with ``len()`` giving ``count``."""

    def __len__(self) -> int:
        return self.count


class BoringModel(Module):
    """``Linear(32, 2)`` pushed towards ones; every stage reads 64 random vectors, one per batch.

    Subclass it and override the one hook a test or a bug report is about::

        class Model(BoringModel):
            def on_train_epoch_end(self):
                ...
    """

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(32, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def loss(self, preds: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        target = torch.ones_like(preds) if labels is None else labels
        return nn.functional.mse_loss(preds, target)

    def step(self, batch: Any) -> Tensor:
        return self.loss(self(batch))

    def training_step(self, batch: Any, batch_idx: int):
        return {"loss": self.step(batch)}

    def validation_step(self, batch: Any, batch_idx: int):
        return {"x": self.step(batch)}

    def test_step(self, batch: Any, batch_idx: int):
        return {"y": self.step(batch)}

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))


class BoringDataModule(DataModule):
    """256 random vectors cut in four: 64 each for train, val, test and predict, one per batch; ``setup``
    makes only the parts its stage uses (val for "fit" and "validate")."""

    def __init__(self) -> None:
        super().__init__()
        self.random_full = RandomDataset(32, 64 * 4)

    def setup(self, stage: str) -> None:
        part = {name: Subset(self.random_full, range(64 * i, 64 * (i + 1)))
                for i, name in enumerate(("train", "val", "test", "predict"))}
        if stage == "fit":
            self.random_train = part["train"]
        if stage in ("fit", "validate"):
            self.random_val = part["val"]
        if stage == "test":
            self.random_test = part["test"]
        if stage == "predict":
            self.random_predict = part["predict"]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.random_train)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.random_val)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.random_test)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.random_predict)


class BoringDataModuleNoLen(BoringDataModule):
    """As :class:`BoringDataModule` with iterable datasets that have no ``len()``: 512 train, 128 val,
    256 test and 64 predict vectors."""

    def __init__(self) -> None:
        DataModule.__init__(self)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.random_train = RandomIterableDataset(32, 512)
        if stage in ("fit", "validate"):
            self.random_val = RandomIterableDataset(32, 128)
        if stage == "test":
            self.random_test = RandomIterableDataset(32, 256)
        if stage == "predict":
            self.random_predict = RandomIterableDataset(32, 64)


class IterableBoringDataModule(DataModule):
    """Two loaders per stage, one over a map-style dataset and one over an iterable one (vectors of 4):
    16 + 16 for train, 32 + 32 val, 64 + 64 test, 128 + 128 predict; each ``*_dataloader`` returns the list."""

    _SIZES = {"train": 16, "val": 32, "test": 64, "predict": 128}

    def setup(self, stage: str) -> None:
        def pair(kind):
            n = self._SIZES[kind]
            return [RandomDataset(4, n), RandomIterableDataset(4, n)]

        if stage == "fit":
            self.train_datasets = pair("train")
        if stage in ("fit", "validate"):
            self.val_datasets = pair("val")
        if stage == "test":
            self.test_datasets = pair("test")
        if stage == "predict":
            self.predict_datasets = pair("predict")

    def train_dataloader(self):
        return [DataLoader(ds) for ds in self.train_datasets]

    def val_dataloader(self):
        return [DataLoader(ds) for ds in self.val_datasets]

    def test_dataloader(self):
        return [DataLoader(ds) for ds in self.test_datasets]

    def predict_dataloader(self):
        return [DataLoader(ds) for ds in self.predict_datasets]


class ManualOptimBoringModel(BoringModel):
    """:class:`BoringModel` under manual optimisation: zero_grad, ``manual_backward`` and step by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int):
        optimizer = self.optimizers()
        loss = self.step(batch)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss


class DemoModel(Module):
    """``relu(Linear(32, out_dim))`` whose training loss is the sum of its outputs, with Adam."""

    def __init__(self, out_dim: int = 10, learning_rate: float = 0.02):
        super().__init__()
        self.l1 = nn.Linear(32, out_dim)
        self.learning_rate = learning_rate

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.l1(x.view(x.size(0), -1)))

    def training_step(self, batch: Any, batch_idx: int):
        return self(batch).sum()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)


class Net(nn.Module):
    """The classic MNIST convnet (two convolutions, max-pool, dropout, two linear layers, log-softmax)
    for 1x28x28 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        x = self.dropout1(nn.functional.max_pool2d(x, 2)).flatten(1)
        x = self.dropout2(torch.relu(self.fc1(x)))
        return nn.functional.log_softmax(self.fc2(x), dim=1)
