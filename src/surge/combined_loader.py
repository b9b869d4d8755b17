"""CombinedLoader: several iterables (dataloaders) read as one, in one of four modes.

``CombinedLoader({"a": loader_a, "b": loader_b}, mode)`` yields ``(batch, batch_idx, dataloader_idx)``:

- ``"min_size"`` (the default): one batch of each per step, ``{"a": ..., "b": ...}``; ends with the shortest.
- ``"max_size_cycle"``: the same, but ends with the longest; a shorter one starts again when it runs out.
  This is what ``fit`` makes of a list or dict of training dataloaders.
- ``"max_size"``: ends with the longest; one that ran out gives ``None``.
- ``"sequential"``: every batch of the first, then of the second, ...: the batch as that loader gives it,
  ``batch_idx`` counted per loader, ``dataloader_idx`` its position. What validation and test do with several.

The iterables may be a list, tuple, namedtuple or dict, nested (``{"a": [l1, l2], "b": l3}``); the batch has
the same shape. A container holding only numbers or strings (``[1, 2, 3]``) counts as one iterable.

Example::

    loaders = {"a": DataLoader(range(6), batch_size=4), "b": DataLoader(range(15), batch_size=5)}
    for batch, batch_idx, dataloader_idx in CombinedLoader(loaders, "max_size_cycle"):
        ...  # 3 steps: batch["a"] holds [0..3], [4, 5], then [0..3] again

In ``max_size_cycle`` an iterable that starts again draws its random order (a shuffling sampler's seed) from a
seed fixed when the pass began, not from the global random stream: the training randomness after it does
not depend on when loaders restart, and a run resumed inside the epoch restarts them in the same order.
"""
from __future__ import annotations

import collections
from typing import Any, Iterable, Iterator, Optional, Union

import torch

MODES = ("min_size", "max_size_cycle", "max_size", "sequential")
_REDUCE = {"min_size": min, "max_size_cycle": max, "max_size": max, "sequential": sum}

_Limit = Union[int, float]


# ---------------------------------------------------------------------- the shape of the iterables
def _is_container(obj: Any) -> bool:
    return isinstance(obj, (dict, list, tuple))


def _children(obj: Any) -> list:
    return list(obj.values()) if isinstance(obj, dict) else list(obj)


def _is_leaf(obj: Any) -> bool:
    # A container of numbers or strings (or an empty one) is data, not a collection of iterables.
    return not _is_container(obj) or all(isinstance(c, (int, float, str)) for c in _children(obj))


def _flatten(obj: Any) -> tuple[list, Any]:
    """The iterables in ``obj`` in order, and a spec that :func:`_unflatten` rebuilds the shape from."""
    if _is_leaf(obj):
        return [obj], None
    leaves, specs = [], []
    for child in _children(obj):
        child_leaves, spec = _flatten(child)
        leaves += child_leaves
        specs.append((len(child_leaves), spec))
    return leaves, (obj, specs)


def _unflatten(values: list, spec: Any) -> Any:
    if spec is None:
        return values[0]
    template, specs = spec
    parts, start = [], 0
    for count, child_spec in specs:
        parts.append(_unflatten(values[start:start + count], child_spec))
        start += count
    if isinstance(template, dict):
        pairs = zip(template.keys(), parts)
        if isinstance(template, collections.defaultdict):
            return type(template)(template.default_factory, pairs)
        try:
            return type(template)(pairs)
        except TypeError:  # a dict subclass whose constructor takes something else
            return dict(pairs)
    if isinstance(template, tuple) and hasattr(template, "_fields"):  # namedtuple
        return type(template)(*parts)
    try:
        return type(template)(parts)
    except TypeError:
        return list(parts) if isinstance(template, list) else tuple(parts)


def _length(iterable) -> _Limit:
    """``len(iterable)``, or ``inf`` when it has none (an iterable dataset)."""
    try:
        return len(iterable)
    except (TypeError, NotImplementedError):
        return float("inf")


# ---------------------------------------------------------------------- one pass, per mode
class _Pass(Iterator):
    """One pass over the iterables; yields ``(values, batch_idx, dataloader_idx)``."""

    def __init__(self, iterables: list, limits: Optional[list] = None) -> None:
        if limits is not None and len(limits) != len(iterables):
            raise ValueError(f"the number of limits ({len(limits)}) and number of iterables ({len(iterables)}) "
                             f"must match: one limit per iterable")
        self.iterables = iterables
        self.limits = limits
        self.iterators: list = []
        self._idx = 0

    def __iter__(self) -> "_Pass":
        self.iterators = [iter(it) for it in self.iterables]
        self._idx = 0
        # With limits the pass ends after len() steps (the limit of the loop that reads it).
        self._stop = self.length() if self.limits is not None else float("inf")
        return self

    def __next__(self):
        if self._idx >= self._stop:
            raise StopIteration
        values = self._values()
        idx, self._idx = self._idx, self._idx + 1
        return values, idx, 0

    def _values(self) -> list:
        raise NotImplementedError

    def _lengths(self) -> list:
        lengths = [_length(it) for it in self.iterables]
        if self.limits is None:
            return lengths
        return [min(n, limit) for n, limit in zip(lengths, self.limits)]

    def length(self) -> _Limit:
        raise NotImplementedError

    def __getstate__(self) -> dict:
        # A DataLoader's iterator cannot be pickled: a pickled pass starts again when iterated.
        state = self.__dict__.copy()
        state["iterators"] = []
        return state


class _MinSize(_Pass):
    def _values(self) -> list:
        return [next(it) for it in self.iterators]

    def length(self) -> _Limit:
        lengths = [_length(it) for it in self.iterables]
        return min(lengths + list(self.limits or [])) if lengths else 0


class _MaxSizeCycle(_Pass):
    def __iter__(self) -> "_MaxSizeCycle":
        super().__iter__()
        self._consumed = [False] * len(self.iterables)
        self._restarts = [0] * len(self.iterables)
        # The seed restarts draw from: the next number the global stream would give, read without taking it.
        gen = torch.Generator()
        gen.set_state(torch.get_rng_state())
        self._seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        return self

    def _values(self) -> list:
        values, ran_out = [None] * len(self.iterators), []
        for i, it in enumerate(self.iterators):
            try:
                values[i] = next(it)
            except StopIteration:
                self._consumed[i] = True
                ran_out.append(i)
        if all(self._consumed):
            raise StopIteration  # the longest ran out, and every other one has been through once
        for i in ran_out:
            values[i] = self._restart(i)
        return values

    def _restart(self, i: int):
        """Start iterable ``i`` again and return its first item, its random draws seeded apart."""
        self._restarts[i] += 1
        seed = (self._seed + 1_000_003 * (i + 1) + 7_919 * self._restarts[i]) % 2**63
        # A sampler draws its shuffle seed at the first next(), so both happen under the fixed seed.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            self.iterators[i] = iter(self.iterables[i])
            return next(self.iterators[i])  # an empty iterable ends the pass here (StopIteration)

    def length(self) -> _Limit:
        lengths = self._lengths()
        return max(lengths) if lengths else 0


class _MaxSize(_Pass):
    def __iter__(self) -> "_MaxSize":
        super().__iter__()
        self._done = [False] * len(self.iterables)
        return self

    def _values(self) -> list:
        values = [None] * len(self.iterators)
        for i, it in enumerate(self.iterators):
            if not self._done[i]:
                try:
                    values[i] = next(it)
                except StopIteration:
                    self._done[i] = True
        if all(self._done):
            raise StopIteration
        return values

    def length(self) -> _Limit:
        lengths = self._lengths()
        return max(lengths) if lengths else 0


class _Sequential(_Pass):
    """Each iterable to its end (or its limit) in turn; only the current one is started, so the workers
    of one DataLoader run at a time."""

    def __iter__(self) -> "_Sequential":
        self._idx, self._current = 0, -1
        self._next_iterable()
        return self

    def _next_iterable(self) -> None:
        self._current += 1
        self._idx = 0
        # An iterable whose limit is 0 is not started at all.
        while self._current < len(self.iterables) and self._limit(self._current) <= 0:
            self._current += 1
        self.iterators = [iter(self.iterables[self._current])] if self._current < len(self.iterables) else []

    def _limit(self, i: int) -> _Limit:
        return float("inf") if self.limits is None else self.limits[i]

    def __next__(self):
        while self.iterators:
            if self._idx < self._limit(self._current):
                try:
                    value = next(self.iterators[0])
                except StopIteration:
                    pass
                else:
                    idx, self._idx = self._idx, self._idx + 1
                    return value, idx, self._current
            self._next_iterable()
        raise StopIteration

    def length(self) -> _Limit:
        return sum(self._lengths())


_PASSES = {"min_size": _MinSize, "max_size_cycle": _MaxSizeCycle, "max_size": _MaxSize, "sequential": _Sequential}


# ---------------------------------------------------------------------- the public class
class CombinedLoader(Iterable):
    """Iterate several iterables together (see the module docstring for the modes).

    Args:
        iterables: one iterable, or a list / tuple / dict of them (nested).
        mode: ``"min_size"`` (default), ``"max_size_cycle"``, ``"max_size"`` or ``"sequential"``.

    Iterating yields ``(batch, batch_idx, dataloader_idx)``. ``len()`` is the number of steps of one pass
    (under ``limits``); it raises ``TypeError`` when that is unbounded (an iterable without ``len``).
    """

    def __init__(self, iterables: Any, mode: str = "min_size") -> None:
        if mode not in _PASSES:
            raise ValueError(f"Unsupported mode {mode!r}: CombinedLoader's mode is one of {list(MODES)}")
        self._iterables = iterables
        self._flattened, self._spec = _flatten(iterables)
        self._mode = mode
        self._limits: Optional[list] = None
        self._iterator: Optional[_Pass] = None

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def iterables(self) -> Any:
        """The iterables, in the shape they were given."""
        return self._iterables

    @property
    def flattened(self) -> list:
        """The iterables as a flat list (nested containers in order)."""
        return self._flattened

    @flattened.setter
    def flattened(self, iterables: list) -> None:
        """Replace the iterables, one for one (the shape stays): how the Trainer puts in loaders with a
        distributed sampler."""
        if len(iterables) != len(self._flattened):
            raise ValueError(f"the new flattened length ({len(iterables)}) and existing length "
                             f"({len(self._flattened)}) must match: replace the iterables one for one")
        self._flattened = list(iterables)
        self._iterables = _unflatten(self._flattened, self._spec)

    @property
    def limits(self) -> Optional[list]:
        """At most this many batches of each iterable per pass (``None``: no limit)."""
        return self._limits

    @limits.setter
    def limits(self, limits: Union[_Limit, list, None]) -> None:
        if isinstance(limits, (int, float)) and not isinstance(limits, bool):
            limits = [limits] * len(self._flattened)
        elif limits is not None:
            limits = list(limits)
            if len(limits) != len(self._flattened):
                raise ValueError(f"the number of limits ({len(limits)}) and number of iterables "
                                 f"({len(self._flattened)}) must match: one limit per iterable")
        self._limits = limits

    @property
    def sampler(self) -> Any:
        """Each iterable's ``sampler`` (``None`` where it has none), in the shape of the iterables."""
        return _unflatten([getattr(it, "sampler", None) for it in self._flattened], self._spec)

    @property
    def batch_sampler(self) -> Any:
        """Each iterable's ``batch_sampler`` (``None`` where it has none), in the shape of the iterables."""
        return _unflatten([getattr(it, "batch_sampler", None) for it in self._flattened], self._spec)

    def __iter__(self) -> "CombinedLoader":
        self._iterator = iter(_PASSES[self._mode](self._flattened, self._limits))
        return self

    def __next__(self):
        if self._iterator is None:
            iter(self)
        values, batch_idx, dataloader_idx = next(self._iterator)
        if self._mode == "sequential":
            return values, batch_idx, dataloader_idx
        return _unflatten(values, self._spec), batch_idx, dataloader_idx

    def __len__(self) -> int:
        n = _PASSES[self._mode](self._flattened, self._limits).length()
        if n == float("inf"):
            raise TypeError(f"this CombinedLoader (mode {self._mode!r}) has no length: an iterable in it has no len()")
        return int(n)

    def reset(self) -> None:
        """End the current pass and stop the worker processes of the DataLoaders in it."""
        self._iterator = None
        for it in self._flattened:
            running = getattr(it, "_iterator", None)  # a DataLoader with persistent_workers keeps one
            if running is not None and hasattr(running, "_shutdown_workers"):
                running._shutdown_workers()
            if hasattr(it, "_iterator"):
                it._iterator = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_iterator"] = None  # a running pass holds DataLoader iterators, which do not pickle
        return state

    def __repr__(self) -> str:
        return f"CombinedLoader(mode={self._mode!r}, iterables={len(self._flattened)})"
