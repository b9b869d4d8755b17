"""Getting each stage's dataloaders and moving batches to the device, part of the Trainer."""
from __future__ import annotations

from typing import Iterable

import torch

from .data import num_batches, rebuild_dataloader
from .datamodule import DataModule, _overrides
from .utils import MisconfigurationError, SurgeError


class DataHandling:
    """Trainer methods for dataloaders and batch transfer; mixed into :class:`surge.Trainer`."""

    def _loader(self, kind: str):
        """The training dataloader for this process, with its batch count set."""
        loaders = self._loaders(kind)
        if len(loaders) != 1:
            raise MisconfigurationError(f"fit() takes one training dataloader, got {len(loaders)}")
        return loaders[0]

    def _loaders(self, kind: str) -> list:
        given = self._given_loaders.get(kind)
        source = f"the {kind}_dataloaders argument"
        if given is None:
            holder = self.datamodule if self.datamodule is not None else self.module
            base = DataModule if holder is self.datamodule else None
            fn_name = f"{kind}_dataloader"
            fn = getattr(holder, fn_name, None)
            if fn is None or (base is not None and not _overrides(holder, fn_name, base)):
                if kind == "train":
                    raise MisconfigurationError(
                        "fit() has no training data: pass train_dataloaders, a datamodule with train_dataloader(), "
                        "or define train_dataloader() on the module"
                    )
                if kind in ("test", "predict"):
                    raise MisconfigurationError(f"trainer.{'test' if kind == 'test' else 'predict'}() has no data: pass "
                                                f"dataloaders or a datamodule with {fn_name}()")
                self._set_counts(kind, [])
                return []
            self._results.hook = fn_name
            given = fn()
            source = f"{type(holder).__name__}.{fn_name}()"
        loaders = list(given.values()) if isinstance(given, dict) else \
            list(given) if isinstance(given, (list, tuple)) else [given]
        for loader in loaders:
            if not isinstance(loader, Iterable):
                raise MisconfigurationError(f"{source} gave a {type(loader).__name__}, which is not iterable; expected a DataLoader")
        if kind == "train" and self.overfit_batches > 0:
            loaders = [rebuild_dataloader(ld, shuffle=False) if isinstance(ld, torch.utils.data.DataLoader) else ld
                       for ld in loaders]
        loaders = [self.strategy.process_dataloader(ld, kind) for ld in loaders]
        self._set_counts(kind, loaders)
        if kind == "train":
            self.num_training_batches = self._count(loaders[0], "train")
            if self.num_training_batches == 0:
                raise SurgeError("the training dataloader has no batches (len() == 0 or limit_train_batches=0)")
        return loaders

    def _set_counts(self, kind: str, loaders: list) -> None:
        counts = [self._count(ld, kind) for ld in loaders]
        if kind == "val":
            self.num_val_batches = counts
        elif kind == "test":
            self.num_test_batches = counts
        elif kind == "predict":
            self.num_predict_batches = counts

    def _count(self, loader, kind: str):
        limit_name = {"train": "limit_train_batches", "val": "limit_val_batches", "test": "limit_test_batches",
                      "predict": "limit_predict_batches"}[kind]
        return num_batches(loader, getattr(self, limit_name), limit_name)

    def _to_device(self, batch, dataloader_idx: int):
        module = self.module
        # "64-true", "bf16-true", "16-true": floating inputs take the parameters' dtype (a no-op otherwise).
        convert = self.strategy.precision.convert_input
        if self._transfer_is_noop:
            return convert(batch)
        dm = self.datamodule
        if dm is not None:
            batch = dm.on_before_batch_transfer(batch, dataloader_idx)
        batch = module.on_before_batch_transfer(batch, dataloader_idx)
        batch = self.strategy.batch_to_device(batch, module, dataloader_idx)
        if dm is not None:
            batch = dm.on_after_batch_transfer(batch, dataloader_idx)
        return convert(module.on_after_batch_transfer(batch, dataloader_idx))
