"""Dataloader handling: batch transfer to a device, counting batches, limits, samplers."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Union

import torch
from torch.utils.data import DataLoader, IterableDataset, SequentialSampler

from .utils import MisconfigurationError


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor in ``batch`` (nested dicts, lists, tuples, namedtuples, dataclasses) to
    ``device``; objects with a ``.to`` method are moved too; anything else is returned as is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        moved = {k: move_to_device(v, device, non_blocking) for k, v in batch.items()}
        return moved if type(batch) is dict else type(batch)(moved)  # keep OrderedDict, defaultdict-free subclasses
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        changes = {f.name: move_to_device(getattr(batch, f.name), device, non_blocking)
                   for f in dataclasses.fields(batch) if f.init}
        return dataclasses.replace(batch, **changes)
    to = getattr(batch, "to", None)
    if callable(to):
        try:
            return to(device)
        except TypeError:
            return batch
    return batch


def batch_size_of(batch: Any) -> int:
    """The size of the first dimension of the first tensor found in ``batch`` (1 if none)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else 1
    if isinstance(batch, dict):
        items = batch.values()
    elif isinstance(batch, (list, tuple)):
        items = batch
    elif dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        items = (getattr(batch, f.name) for f in dataclasses.fields(batch))
    else:
        return 1
    for item in items:
        size = batch_size_of(item)
        if size != 1 or isinstance(item, torch.Tensor):
            return size
    return 1


def has_len(loader) -> bool:
    """Whether ``len(loader)`` is known (map-style datasets; iterable datasets defining ``__len__``)."""
    try:
        len(loader)
    except (TypeError, NotImplementedError):
        return False
    return True


def num_batches(loader, limit: Union[int, float], arg_name: str) -> Union[int, float]:
    """How many batches of ``loader`` one epoch uses under ``limit`` (``inf``: run until exhausted, as
    Lightning counts a loader without a length).

    ``limit`` is an int (that many batches at most) or a float in [0, 1] (that fraction of the loader).
    """
    length = len(loader) if has_len(loader) else None
    if isinstance(limit, float):
        if length is None:
            if limit == 1.0:
                return math.inf
            raise MisconfigurationError(
                f"{arg_name}={limit} is a fraction, but the dataloader has no length (an iterable dataset); "
                f"give {arg_name} as an int number of batches"
            )
        n = int(length * limit)
        if n == 0 and limit > 0 and length > 0:
            raise MisconfigurationError(
                f"{arg_name}={limit} of a dataloader of {length} batches is 0 batches; raise {arg_name}"
            )
        return n
    return limit if length is None else min(length, limit)


def check_limit(value, name: str) -> Union[int, float]:
    """Validate a ``limit_*_batches`` / ``overfit_batches`` argument."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MisconfigurationError(f"{name} must be an int (batches) or a float in [0.0, 1.0] (fraction), got {value!r}")
    if isinstance(value, float) and not 0.0 <= value <= 1.0:
        raise MisconfigurationError(f"{name} as a float is a fraction in [0.0, 1.0], got {value}")
    if isinstance(value, int) and value < 0:
        raise MisconfigurationError(f"{name} must be >= 0, got {value}")
    return value


_LOADER_ARGS = ("num_workers", "collate_fn", "pin_memory", "drop_last", "timeout", "worker_init_fn",
                "multiprocessing_context", "generator", "prefetch_factor", "persistent_workers",
                "pin_memory_device", "in_order")


def loader_settings(loader: DataLoader, leave_out: tuple = ()) -> dict:
    """The keyword arguments ``loader`` was built with (all but the dataset, sampler and batch size), for a new
    DataLoader like it; those a loader without workers refuses (prefetch_factor, persistent_workers) left out."""
    kwargs = {name: getattr(loader, name) for name in _LOADER_ARGS if hasattr(loader, name) and name not in leave_out}
    if kwargs.get("num_workers", 0) == 0:
        kwargs.pop("prefetch_factor", None)
        kwargs.pop("persistent_workers", None)
    return kwargs


def rebuild_dataloader(loader: DataLoader, sampler=None, shuffle: Optional[bool] = None, **overrides) -> DataLoader:
    """A new ``DataLoader`` over the same dataset and settings with another sampler.

    Used to put a sequential sampler in for ``overfit_batches`` and a distributed sampler in for DDP.
    """
    if not isinstance(loader, DataLoader):
        raise MisconfigurationError(f"cannot replace the sampler of a {type(loader).__name__}; pass a DataLoader")
    if isinstance(loader.dataset, IterableDataset):
        return loader
    kwargs = loader_settings(loader)
    if sampler is None:
        sampler = SequentialSampler(loader.dataset) if shuffle is False else loader.sampler
    batch_size = loader.batch_size
    if batch_size is None:  # the user gave a batch_sampler
        raise MisconfigurationError("cannot replace the sampler of a DataLoader built with batch_sampler=")
    kwargs.update(overrides)
    new = type(loader) if type(loader) is DataLoader else DataLoader
    return new(loader.dataset, batch_size=batch_size, sampler=sampler, **kwargs)


def is_shuffled(loader) -> bool:
    from torch.utils.data import RandomSampler

    return isinstance(getattr(loader, "sampler", None), RandomSampler)


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)
