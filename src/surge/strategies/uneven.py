"""Ending an epoch together when ranks hold different amounts of data (iterable datasets under DDP).

A map-style dataset gets a ``DistributedSampler``, which pads so that every rank runs the same number
of steps. An ``IterableDataset`` splits itself, and its shards can differ in length: the rank that runs
out first would leave the training epoch while the others wait for it in DDP's gradient all-reduce,
until the process-group timeout (Lightning #20404). Here every rank says, before each batch, whether
it has one (one all-reduce of a single number), and all stop as soon as one rank has none: the extra
batches of the longer ranks are dropped for this epoch, exactly as ``drop_last`` drops a short batch.

The vote is one batch ahead: before handing out batch k, every rank knows whether all ranks have batch
k + 1. So the last batch is known as the last before it runs, and the strategy synchronises its
gradients even inside an accumulation window (``strategy.final_batch_out``): the optimizer step that
ends the epoch then uses the same, all-reduced gradients on every rank. (A reader that runs further
ahead, such as the CUDA prefetcher, only makes that flag rise earlier: synchronising one more
micro-batch of a window costs an all-reduce but gives the same sum.)

The vote costs one tiny collective per training batch and is used only where it is needed: training
loaders over an ``IterableDataset`` in runs of more than one process.
"""
from __future__ import annotations

from torch.utils.data import DataLoader

from ..data import loader_settings


class EvenBatchesLoader(DataLoader):
    """A ``DataLoader`` over the same iterable dataset that stops on every rank when any rank runs out."""

    def __iter__(self):
        batches = super().__iter__()
        strategy = self.surge_strategy
        strategy.final_batch_out = False
        batch, every_rank_has_it = self._next(batches)
        while every_rank_has_it:
            upcoming, every_rank_has_it = self._next(batches)
            if not every_rank_has_it:  # some rank has no batch after this one: every rank ends the epoch after it
                strategy.final_batch_out = True
            yield batch
            batch = upcoming

    def _next(self, batches):
        """This rank's next batch (None at its end) and whether every rank has one."""
        try:
            batch, have = next(batches), True
        except StopIteration:
            batch, have = None, False
        strategy = self.surge_strategy
        with strategy.collective("the vote whether every rank has another training batch (an IterableDataset "
                                 "under several processes)"):
            return batch, strategy.reduce_boolean_decision(have, all=True)


def even_batches(loader, strategy):
    """``loader`` rebuilt as an :class:`EvenBatchesLoader` (the user's own loader object is left untouched)."""
    even = EvenBatchesLoader(loader.dataset, batch_size=loader.batch_size, **loader_settings(loader))
    even.surge_strategy = strategy
    return even
