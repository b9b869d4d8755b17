"""When a collective fails under several processes: say which one, and which ranks did not come.

A collective (an all-reduce, a barrier, DDP's gradient synchronisation...) fails in two ways when
something is wrong with a peer: torch's timeout (``DDP(timeout=...)``) when a peer hangs or waits in
another collective, or a connection error when a peer died. torch's message names neither the
operation in the user's terms nor the peer ("Timed out waiting 5000ms for recv operation").

So every rank whose collective failed writes what it was waiting in to the rendezvous store (the
key-value store every rank of the process group is connected to, independent of the broken
collective) and reads what the others wrote, for a short while:

- ranks that never answer are the missing ones: hung (a deadlock, an endless loop, a stuck
  dataloader) or dead;
- ranks that answer from a *different* operation took another path through the code: the usual
  cause is a collective under ``if rank == 0`` (``self.log(..., sync_dist=True)`` on some ranks only).

torch's ``monitored_barrier(wait_all_ranks=True)`` also finds the missing ranks, but only from rank 0,
it runs on the very process group whose collective just failed, and it cannot say where the others
were. Nothing here runs while collectives succeed: the cost is a try/except around each.
"""
from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Optional

import torch.distributed as dist

from ..utils import SurgeError

_PREFIX = "surge/failed-collective"
# How long a failed rank waits for the others' answers: their own timeout fires up to about one
# timeout later (they entered their collective later), but a failing job should not linger for long.
_MIN_GRACE, _MAX_GRACE = timedelta(seconds=5), timedelta(seconds=60)


class CollectiveError(SurgeError, RuntimeError):
    """A collective timed out or lost a peer; the message names the operation and the missing ranks.

    torch's own error is the ``__cause__``.
    """


class NamedCollectives:
    """Mixed into the distributed strategies: their collectives run under a name, and a failing one
    raises :class:`CollectiveError` saying what it was for. Needs ``global_rank``, ``world_size``,
    ``timeout`` and a ``_op_names`` list on the strategy."""

    def collective(self, what: str):
        """Name the collectives run inside: if one fails (a timeout, a lost peer), raise
        :class:`~surge.strategies.collectives.CollectiveError` naming ``what``, the ranks that never came
        and where the others were waiting (see :mod:`surge.strategies.collectives`).

        The name wins over the strategy's generic names for the collectives run inside (its all_gather,
        reduce, ...), so a caller that knows what they are for names them::

            with strategy.collective("the all_gather of self.log('acc', sync_dist=True)"):
                strategy.all_gather(value)
        """
        return self._guard(what, named=True)

    def _op(self, default: str):
        """Guard one of the strategy's own collectives, named ``default`` unless a caller named it already."""
        if self._op_names and self._op_names[-1][1]:
            return _Guard(self, self._op_names[-1][0], True)
        return _Guard(self, default, False)

    def _guard(self, what: str, named: bool):
        return _Guard(self, what, named)

    def _guarded(self, entry: tuple, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` under the name ``entry`` = (what, named): what a ``with self._guard(...)`` does, without
        a context object. The training step and backward run through it every step; a ``try`` costs nothing
        until something raises."""
        names = self._op_names
        if names and names[-1][1] and not entry[1]:  # a caller named what runs inside: its name wins
            entry = names[-1]
        names.append(entry)
        try:
            out = fn(*args, **kwargs)
        except BaseException as err:
            names.pop()
            _raise_if_collective_failure(self, err, entry[0])
            raise
        names.pop()
        return out


class _Guard:
    """The context of one named collective (a plain class: a generator-based context costs several times
    more than two method calls). The training step and backward, run every step, use ``_guarded`` instead."""

    __slots__ = ("strategy", "entry")

    def __init__(self, strategy, what: str, named: bool) -> None:
        self.strategy, self.entry = strategy, (what, named)

    def __enter__(self) -> None:
        self.strategy._op_names.append(self.entry)

    def __exit__(self, kind, err, tb) -> bool:
        self.strategy._op_names.pop()
        if err is not None:
            _raise_if_collective_failure(self.strategy, err, self.entry[0])
        return False


def _raise_if_collective_failure(strategy, err: BaseException, what: str) -> None:
    """Raise the :class:`CollectiveError` that explains ``err`` when it is a failing collective (else return)."""
    if isinstance(err, Exception) and is_collective_failure(err):
        raise explain(err, what, strategy.global_rank, strategy.world_size, strategy.timeout) from err


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` is torch.distributed failing (a timeout, a lost connection), not an error of user code."""
    if isinstance(err, CollectiveError):
        return False  # already explained by an inner guard
    if isinstance(err, getattr(dist, "DistError", ())):
        return True  # NCCL's watchdog timeouts, store and network errors
    text = str(err)
    # gloo raises plain RuntimeErrors whose message starts with the gloo source file that failed
    return isinstance(err, RuntimeError) and "gloo" in text and any(
        sign in text for sign in ("Timed out", "timed out", "Connection", "connection", "closed", "Broken pipe"))


def explain(err: BaseException, what: str, rank: int, world_size: int, timeout: timedelta) -> CollectiveError:
    """The error to raise on ``rank`` instead of ``err``: ``what`` failed, who was missing, who was elsewhere."""
    timed_out = "timed out" in str(err).lower() or "timeout" in str(err).lower()
    cause = (f"it did not complete within the process-group timeout ({_seconds(timeout)}, DDP(timeout=...))"
             if timed_out else f"it lost its connection to another rank ({_first_line(err)})")
    lines = [f"rank {rank} of {world_size}: {what} failed: {cause}."]
    grace = min(max(timeout, _MIN_GRACE), _MAX_GRACE)
    answers = _ask_the_others(rank, world_size, what, grace)
    if answers is None:
        lines.append("surge could not ask the other ranks where they are: the rendezvous store is unreachable "
                     "(the process hosting it, rank 0 or the torchrun agent, may be gone).")
        return CollectiveError("\n".join(lines))
    missing = [r for r in range(world_size) if r not in answers]
    if missing:
        lines.append(f"Rank(s) {missing} did not answer within {_seconds(grace)}: they are hung (a deadlock, an "
                     f"endless loop, a stuck dataloader or I/O) or dead (or much slower than this rank to time out); "
                     f"see their own output, or their stacks with `py-spy dump --pid <pid>`.")
    places: dict[str, list[int]] = {}
    for r, where in sorted(answers.items()):
        places.setdefault(where, []).append(r)
    if len(places) > 1:
        detail = "; ".join(f"rank(s) {ranks} in {where}" for where, ranks in places.items())
        lines.append(f"The ranks were waiting in different collectives ({detail}): they took different paths "
                     f"through the code, and each waits for the others forever. The usual causes: a collective "
                     f"on some ranks only, such as self.log(..., sync_dist=True) under `if self.global_rank == 0` "
                     f"(log it on every rank, or without sync_dist), ranks running different numbers of batches, or "
                     f"trainer.should_stop = True on some ranks only (set it on every rank, or let EarlyStopping "
                     f"decide, which agrees across ranks).")
    elif not missing and timed_out:
        lines.append("Every rank answered from this same operation: a rank was slower than the timeout (a long "
                     "checkpoint write, a slow dataloader); raise DDP(timeout=...).")
    return CollectiveError("\n".join(lines))


def _ask_the_others(rank: int, world_size: int, what: str, grace: timedelta) -> Optional[dict[int, str]]:
    """Post ``what`` for ``rank`` in the rendezvous store and collect the other ranks' posts for up to ``grace``.

    Returns {rank: what it was waiting in}, this rank included, or None when the store is unreachable.
    """
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(grace)  # a store whose host hangs must not hold this rank for the full timeout
        # torchrun's agent keeps one store across restarts: each attempt posts under its own key.
        prefix = f"{_PREFIX}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        store.set(prefix + str(rank), what)
        answers: dict[int, str] = {}
        deadline = time.monotonic() + grace.total_seconds()
        while True:
            for r in range(world_size):
                if r not in answers and store.check([prefix + str(r)]):
                    answers[r] = store.get(prefix + str(r)).decode()
            if len(answers) == world_size or time.monotonic() >= deadline:
                return answers
            time.sleep(0.2)
    except Exception:  # no store (no process group), or its host is gone
        return None


def _seconds(t: timedelta) -> str:
    return f"{t.total_seconds():g} s"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= 200 else text[:200] + "..."
