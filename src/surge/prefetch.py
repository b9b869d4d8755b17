"""The GPU input pipeline: the next batch is copied to the device while the current one computes.

``CUDAPrefetcher`` wraps the training dataloader on a CUDA run. It takes batch i+1 from the loader,
pins it (unless the loader already did, with ``pin_memory=True``) and starts its copy on a side CUDA
stream with ``non_blocking=True`` before handing batch i to the step, so the copy overlaps the
step's kernels instead of stalling before them. The compute stream waits for the side stream only
for the batch it is about to use. On the CPU the Trainer iterates the loader itself: no wrapper.

Trade-off: the loader is read one batch ahead. With ``num_workers=0`` and a dataset drawing random
numbers in ``__getitem__``, that draw now happens one step earlier than in a plain loop.
"""
from __future__ import annotations

import torch

from .data import move_to_device

_END = object()


def transfer_hooks_overridden(trainer) -> bool:
    """Whether the user changes batch transfer (then the batch must reach their hooks as the loader gave it)."""
    from .datamodule import DataModule, _overrides
    from .module import Module

    names = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
    if any(_overrides(trainer.module, n, Module) for n in names):
        return True
    dm = trainer.datamodule
    return dm is not None and any(_overrides(dm, n, DataModule) for n in ("on_before_batch_transfer",
                                                                           "on_after_batch_transfer"))


def _pin(batch):
    return torch.utils._pytree.tree_map(
        lambda t: t.pin_memory() if isinstance(t, torch.Tensor) and t.device.type == "cpu" and not t.is_pinned() else t,
        batch)


def _record(batch, stream) -> None:
    # Memory allocated on the side stream and used on the compute stream: tell the caching allocator,
    # or it could hand the block out again while the compute stream still reads it.
    for t in torch.utils._pytree.tree_leaves(batch):
        if isinstance(t, torch.Tensor) and t.is_cuda:
            t.record_stream(stream)


class CUDAPrefetcher:
    """Iterate ``loader`` with each batch already on ``device``, the next one copying in the background."""

    def __init__(self, loader, device: torch.device) -> None:
        self.loader = loader
        self.device = device
        self.pin = not getattr(loader, "pin_memory", False)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):  # sampler, batch_size, dataset... of the wrapped loader
        return getattr(self.loader, name)

    def _start_copy(self, it, stream):
        batch = next(it, _END)
        if batch is _END:
            return _END
        if self.pin:
            batch = _pin(batch)
        with torch.cuda.stream(stream):
            return move_to_device(batch, self.device, non_blocking=True)

    def __iter__(self):
        side = torch.cuda.Stream(self.device)
        compute = torch.cuda.current_stream(self.device)
        side.wait_stream(compute)  # the first copy goes after whatever the compute stream has queued
        it = iter(self.loader)
        upcoming = self._start_copy(it, side)
        while upcoming is not _END:
            current = upcoming
            compute.wait_stream(side)  # this batch's copy is done before the step reads it
            _record(current, compute)
            upcoming = self._start_copy(it, side)  # overlaps with the step of `current`
            yield current
