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


# ---------------------------------------------------------------------- every rank's own random state
# Ranks draw different amounts of randomness (dropout on batches of other shapes, noise that depends on the
# data, a pipeline's stages running different layers), so each rank's streams are its own: a checkpoint keeps
# them all, gathered to rank 0, which is the rank that writes the file (or FSDP's surge_meta.pt).
def rank_state(loader_state: Optional[dict] = None, sampler_state: Optional[dict] = None) -> dict:
    """This rank's random state now, with the states its data position needs (inside an epoch)."""
    state: dict = {"rng": capture_rng_state()}
    if loader_state is not None:
        state["loader_state"] = loader_state
    if sampler_state is not None:
        state["sampler_state"] = sampler_state
    return state


def gather_rank_states(strategy, own: dict) -> list:
    """Every rank's :func:`rank_state`, indexed by global rank. A collective: every rank calls it, at the
    same point (each builds the checkpoint, whichever rank writes it)."""
    if strategy.world_size == 1:
        return [own]
    with strategy.collective("the gather of every rank's random state for a checkpoint (every rank must "
                             "build the checkpoint at the same step)"):
        return [_unpack_tensors(state) for state in strategy.all_gather_object(_pack_tensors(own))]


_PACKED = "__surge_packed_tensor__"


def _pack_tensors(obj):
    """``obj`` with each tensor (in dicts, lists and tuples) as plain bytes, so that gathering it pickles no
    tensor: a pickled tensor goes through ``torch.save``, and code that counts the saves (or patches
    ``torch.save``) should see checkpoint files only, not a collective's transport."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        raw = t.cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return (_PACKED, str(t.dtype).removeprefix("torch."), tuple(t.shape), str(t.device), raw)
    if type(obj) is dict:
        return {k: _pack_tensors(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(_pack_tensors(v) for v in obj)
    return obj


def _unpack_tensors(obj):
    """The inverse of :func:`_pack_tensors`: the same tensors (dtype, shape, device, values)."""
    if type(obj) is tuple and len(obj) == 5 and obj[0] == _PACKED:
        _, dtype_name, shape, device, raw = obj
        dtype = getattr(torch, dtype_name)
        if raw:
            t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape)
        else:
            t = torch.empty(shape, dtype=dtype)
        return t.to(device) if device != "cpu" else t
    if type(obj) is dict:
        return {k: _unpack_tensors(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(_unpack_tensors(v) for v in obj)
    return obj


def own_rank_state(ckpt: dict, rank: int, world_size: int) -> tuple[dict, Optional[str]]:
    """The state ``rank`` resumes from, and a one-line notice when it cannot be exact (``None`` otherwise).

    A checkpoint written by ``n`` processes resumed on ``world_size`` others: rank ``r`` takes the state saved
    by rank ``r % n``. Checkpoints of older surge versions hold rank 0's state only (``rng``)."""
    saved = ckpt.get("rank_states")
    if saved is not None and not (isinstance(saved, list) and saved and all(
            isinstance(s, dict) and isinstance(s.get("rng"), dict) for s in saved)):
        raise ValueError("rank_states must be a non-empty list of dicts with an 'rng' dict, one per rank that "
                         f"saved it; got {type(saved).__name__}")
    if not saved:
        own = {"rng": ckpt["rng"]} if "rng" in ckpt else {}
        note = None
        if world_size > 1 and own:
            note = (f"holds the random state of one process only (written before surge saved every rank's): "
                    f"all {world_size} ranks continue from it, so their random numbers differ from an uninterrupted run")
        return own, note
    n = len(saved)
    note = None
    if n != world_size:
        note = (f"was written by {n} process{'es' if n > 1 else ''} and this run has {world_size}: the random "
                f"streams and the rest of the interrupted epoch cannot continue exactly (rank r takes the random "
                f"state saved by rank r % {n}, and the data is shared out among {world_size} from here)")
    return saved[rank % n], note
