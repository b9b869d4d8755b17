"""Exact mid-epoch resume: where in its data an epoch was, and the random state to continue from.

An epoch's batch order comes from random draws made when its iteration starts (the DataLoader's worker
base seed, then the sampler's shuffle seed). surge records the random state at those two moments; a
resumed run puts them back so the epoch is drawn again in the same order, skips the indices already
trained on inside the sampler (no batch is loaded twice), and only then puts back the random state of
the moment the checkpoint was written, so dropout and augmentation continue as they would have.
"""
from __future__ import annotations

import itertools
import warnings
from typing import Optional

import torch

from .seed import capture_rng_state, restore_rng_state


class ResumableSampler:
    """Wraps a DataLoader's index sampler (inside its ``BatchSampler``).

    Each epoch it records the random state at the moment the inner sampler starts (``start_state``).
    ``resume(skip, start_state, continue_state)`` makes the next iteration replay that start, drop the
    first ``skip`` indices and restore ``continue_state`` just before yielding the first new index.
    """

    def __init__(self, sampler):
        self.sampler = sampler
        self.start_state: Optional[dict] = None
        self._skip = 0
        self._replay: Optional[dict] = None
        self._continue: Optional[dict] = None

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name):  # set_epoch, num_replicas, ... of the wrapped sampler
        return getattr(self.sampler, name)

    def resume(self, skip: int, start_state: Optional[dict], continue_state: Optional[dict]) -> None:
        self._skip, self._replay, self._continue = skip, start_state, continue_state

    def __iter__(self):
        # A plain (not generator) method: it runs when the BatchSampler starts the epoch, right before the
        # inner sampler makes its first random draw, and in a normal epoch it hands back the inner
        # iterator itself, so iterating costs nothing extra per index.
        if self._replay is not None:
            _restore(self._replay, self.sampler)
        self.start_state = _capture(self.sampler)
        skip, cont = self._skip, self._continue
        self._skip, self._replay, self._continue = 0, None, None
        if skip == 0 and cont is None:
            return iter(self.sampler)
        return self._resumed(iter(self.sampler), skip, cont)

    @staticmethod
    def _resumed(indices, skip: int, cont: Optional[dict]):
        for _ in itertools.islice(indices, skip):  # drop what was trained on, without loading it
            pass
        if cont is not None:
            restore_rng_state(cont)
        yield from indices


def _capture(sampler) -> dict:
    state = {"global": capture_rng_state()}
    gen = getattr(sampler, "generator", None)
    if isinstance(gen, torch.Generator):
        state["sampler_generator"] = gen.get_state()
    return state


def _restore(state: dict, sampler) -> None:
    restore_rng_state(state["global"])
    gen = getattr(sampler, "generator", None)
    if isinstance(gen, torch.Generator) and "sampler_generator" in state:
        gen.set_state(state["sampler_generator"])


def install(loader) -> Optional[ResumableSampler]:
    """Put a :class:`ResumableSampler` under ``loader``'s batch sampler; ``None`` where that is not
    possible (iterable datasets, custom batch samplers, ``batch_size=None``), where a resume falls back
    to reading and dropping the consumed batches."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    if batch_sampler is None or not isinstance(batch_sampler, torch.utils.data.BatchSampler):
        return None
    if isinstance(batch_sampler.sampler, ResumableSampler):
        return batch_sampler.sampler
    wrapper = ResumableSampler(batch_sampler.sampler)
    batch_sampler.sampler = wrapper
    return wrapper


def uninstall(loader) -> None:
    """Undo :func:`install` (the user's DataLoader is theirs again after fit)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    if batch_sampler is not None and isinstance(getattr(batch_sampler, "sampler", None), ResumableSampler):
        batch_sampler.sampler = batch_sampler.sampler.sampler


def position(loader, tracker: Optional[ResumableSampler], loader_state: Optional[dict], batch_idx: int) -> dict:
    """What a checkpoint written inside an epoch needs to come back to batch ``batch_idx``."""
    return {
        "batch_idx": batch_idx,
        "batch_size": getattr(loader, "batch_size", None),
        "loader_state": loader_state,
        "sampler_state": tracker.start_state if tracker is not None else None,
    }


def warn_fallback(loader) -> None:
    warnings.warn(
        f"resuming inside an epoch of a {type(getattr(loader, 'dataset', loader)).__name__} whose sampler surge cannot "
        f"skip (an iterable dataset or a custom batch_sampler): the consumed batches are read again and dropped",
        stacklevel=3,
    )
