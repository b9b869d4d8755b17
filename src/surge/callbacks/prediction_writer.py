"""BasePredictionWriter: write what ``trainer.predict`` computes, batch by batch or once per epoch."""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from enum import Enum
from typing import Any, Optional

from ..utils import MisconfigurationError
from .base import Callback


class WriteInterval(str, Enum):
    """When a :class:`BasePredictionWriter` writes."""

    BATCH = "batch"
    EPOCH = "epoch"
    BATCH_AND_EPOCH = "batch_and_epoch"

    @property
    def on_batch(self) -> bool:
        return self in (WriteInterval.BATCH, WriteInterval.BATCH_AND_EPOCH)

    @property
    def on_epoch(self) -> bool:
        return self in (WriteInterval.EPOCH, WriteInterval.BATCH_AND_EPOCH)


class BasePredictionWriter(Callback):
    """Subclass it and override ``write_on_batch_end`` and/or ``write_on_epoch_end`` to store predictions.

    ``write_interval``: "batch" calls ``write_on_batch_end`` after every ``predict_step``; "epoch" calls
    ``write_on_epoch_end`` once, after the last batch of every predict dataloader, with all the predictions;
    "batch_and_epoch" calls both. ``trainer.predict(..., return_predictions=False)`` still calls them (the
    predictions are kept for ``write_on_epoch_end`` only as long as it needs them).

    ``batch_indices`` are the dataset indices of the samples in a batch, as the loader's sampler gave them: on
    several processes (DDP) each process predicts and writes its own share, with the indices of that share,
    so the files of all ranks together cover the dataset. A loader whose indices cannot be read (not a
    ``torch.utils.data.DataLoader``, or over an ``IterableDataset``) gives empty lists. ``write_on_epoch_end``
    gets the predictions of this process in the order it made them (a list of batch outputs; a list of such
    lists, one per dataloader, with several), and ``batch_indices`` as a list per dataloader of those lists.

    Example::

        class Writer(BasePredictionWriter):
            def __init__(self, folder):
                super().__init__(write_interval="epoch")
                self.folder = folder

            def write_on_epoch_end(self, trainer, module, predictions, batch_indices):
                torch.save({"predictions": predictions, "indices": batch_indices},
                           os.path.join(self.folder, f"predictions_{trainer.global_rank}.pt"))

        trainer = surge.Trainer(strategy="ddp", devices=2, callbacks=[Writer("out")])
        trainer.predict(model, loader, return_predictions=False)
    """

    def __init__(self, write_interval: str = "batch") -> None:
        choices = [i.value for i in WriteInterval]
        if write_interval not in choices:
            raise MisconfigurationError(f"`write_interval` should be one of {choices}.")
        self.interval = WriteInterval(write_interval)

    def setup(self, trainer, module, stage: str) -> None:
        step = getattr(module, "predict_step", None)
        try:
            takes_iterator = callable(step) and "dataloader_iter" in inspect.signature(step).parameters
        except (TypeError, ValueError):  # a builtin or C callable: no signature to read
            takes_iterator = False
        if takes_iterator:
            raise NotImplementedError("The `PredictionWriterCallback` does not support using `dataloader_iter`.")

    def write_on_batch_end(self, trainer, pl_module, prediction: Any, batch_indices: Optional[Sequence[int]],
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        """Write one batch's prediction (override it for ``write_interval`` "batch" or "batch_and_epoch")."""
        raise NotImplementedError(f"{type(self).__name__} writes per batch: override write_on_batch_end")

    def write_on_epoch_end(self, trainer, pl_module, predictions: Sequence[Any], batch_indices: Sequence[Any]) -> None:
        """Write all of the epoch's predictions (override it for ``write_interval`` "epoch" or "batch_and_epoch")."""
        raise NotImplementedError(f"{type(self).__name__} writes per epoch: override write_on_epoch_end")

    def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.interval.on_batch:
            indices = getattr(trainer, "_predict_batch_indices", None)
            self.write_on_batch_end(trainer, module, outputs, indices, batch, batch_idx, dataloader_idx)

    def on_predict_epoch_end(self, trainer, module) -> None:
        if self.interval.on_epoch:
            predictions = getattr(trainer, "_predict_outputs", [])
            indices = getattr(trainer, "_predict_epoch_indices", [])
            self.write_on_epoch_end(trainer, module, predictions, indices)
