"""Ending an epoch together when ranks hold different amounts of data (iterable datasets under DDP).

A map-style dataset gets a ``DistributedSampler``, which pads so that every rank runs the same number
of steps. An ``IterableDataset`` splits itself, and its shards can differ in length: the rank that runs
out first would leave the training epoch while the others wait for it in DDP's gradient all-reduce,
until the process-group timeout (Lightning #20404). Here every rank says, before each batch, whether
it has one (one all-reduce of a single number), and all stop as soon as one rank has none: the extra
batches of the longer ranks are dropped for this epoch, exactly as ``drop_last`` drops a short batch.

The vote costs one tiny collective per training batch and is used only where it is needed: training
loaders over an ``IterableDataset`` in runs of more than one process.
"""
from __future__ import annotations

from torch.utils.data import DataLoader

from ..data import _LOADER_ARGS


class EvenBatchesLoader(DataLoader):
    """A ``DataLoader`` over the same iterable dataset that stops on every rank when any rank runs out."""

    def __iter__(self):
        batches = super().__iter__()
        strategy = self.surge_strategy
        while True:
            try:
                batch, have = next(batches), True
            except StopIteration:
                batch, have = None, False
            if not strategy.reduce_boolean_decision(have, all=True):
                return  # some rank has no batch left: every rank ends the epoch here
            yield batch


def even_batches(loader, strategy):
    """``loader`` rebuilt as an :class:`EvenBatchesLoader` (the user's own loader object is left untouched)."""
    kwargs = {name: getattr(loader, name) for name in _LOADER_ARGS if hasattr(loader, name)}
    if kwargs.get("num_workers", 0) == 0:
        kwargs.pop("prefetch_factor", None)
        kwargs.pop("persistent_workers", None)
    even = EvenBatchesLoader(loader.dataset, batch_size=loader.batch_size, **kwargs)
    even.surge_strategy = strategy
    return even
