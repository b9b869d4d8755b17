"""DataModule: where the data comes from, kept apart from the model."""
from __future__ import annotations

from .hparams import HyperparametersMixin


class DataModule(HyperparametersMixin):
    """Downloads, splits and serves the data for a run.

    ``prepare_data`` runs once per machine (download here, do not set state); ``setup(stage)`` runs
    in every process with ``stage`` one of "fit", "validate", "test", "predict"; the
    ``*_dataloader`` methods return ``DataLoader`` objects (or lists of them for several).

    Example::

        class Digits(surge.DataModule):
            def setup(self, stage):
                self.train_set, self.val_set = random_split(full_set, [0.9, 0.1])
            def train_dataloader(self):
                return DataLoader(self.train_set, batch_size=64, shuffle=True)
            def val_dataloader(self):
                return DataLoader(self.val_set, batch_size=256)
    """

    prepare_data_per_node: bool = True

    def __init__(self) -> None:
        self.trainer = None

    def prepare_data(self) -> None: ...
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...

    def train_dataloader(self):
        raise NotImplementedError
    def val_dataloader(self):
        raise NotImplementedError
    def test_dataloader(self):
        raise NotImplementedError
    def predict_dataloader(self):
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Extra plain-data state saved in checkpoints (override)."""
        return {}

    def load_state_dict(self, state: dict) -> None: ...

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return batch

    @classmethod
    def from_datasets(cls, train_dataset=None, val_dataset=None, test_dataset=None, predict_dataset=None,
                      batch_size: int = 1, num_workers: int = 0, **dataloader_kwargs):
        """A DataModule serving the given datasets (training set shuffled)."""
        from torch.utils.data import DataLoader

        dm = cls()

        def make(ds, shuffle):
            return lambda: DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                                      **dataloader_kwargs)

        for name, ds, shuffle in (("train", train_dataset, True), ("val", val_dataset, False),
                                  ("test", test_dataset, False), ("predict", predict_dataset, False)):
            if ds is not None:
                setattr(dm, f"{name}_dataloader", make(ds, shuffle))
        return dm


def _overrides(obj, name: str, base) -> bool:
    """Whether ``obj`` provides ``name`` itself rather than inheriting ``base``'s placeholder."""
    fn = getattr(obj, name, None)
    if fn is None:
        return False
    return getattr(getattr(fn, "__func__", fn), "__code__", None) is not getattr(base, name).__code__
