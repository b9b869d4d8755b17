"""Seeding and random-number-generator state, for reproducible and resumable runs."""
from __future__ import annotations

import contextlib
import logging
import os
import random
from typing import Optional

import torch

from . import dialect


def seed_everything(seed: Optional[int] = None, workers: bool = False, verbose: bool = True) -> int:
    """Seed python's ``random``, NumPy and torch (all devices) with ``seed`` and return it.

    ``seed=None`` takes the seed an earlier call left in the environment (:func:`env_seed`), or 0.
    The seed is left in ``$SURGE_GLOBAL_SEED`` (``$PL_GLOBAL_SEED`` once ``surge.lightning`` is imported:
    :mod:`surge.dialect`), where worker processes and distributed samplers find it. ``workers=True`` is
    recorded next to it (``$SURGE_SEED_WORKERS``), for seeding each DataLoader worker with its own
    derived seed (:func:`worker_init_fn`). ``verbose``: log "Seed set to N" (logger ``"surge"``, INFO).

    Example::

        surge.seed_everything(42, workers=True)
    """
    if seed is None:
        seed = env_seed()
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed_everything: seed must be an int, got {seed!r}")
    max_seed = 2**32 - 1
    if not 0 <= seed <= max_seed:
        raise ValueError(f"seed_everything: seed must be in [0, {max_seed}], got {seed}")
    names = dialect.active()
    os.environ[names.seed_env] = str(seed)
    os.environ[names.seed_workers_env] = "1" if workers else "0"
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    torch.manual_seed(seed)  # also seeds every CUDA device
    if verbose:
        logging.getLogger("surge").info(f"Seed set to {seed}")
    return seed


def env_seed(default: int = 0) -> int:
    """The seed :func:`seed_everything` left in the environment: the active dialect's variable
    (``$SURGE_GLOBAL_SEED`` or ``$PL_GLOBAL_SEED``), else the other one, else ``default``.

    Example: after ``seed_everything(7)``, ``env_seed()`` is 7 here and in every process started from here.
    """
    active = dialect.active()
    for name in (active.seed_env, *(d.seed_env for d in (dialect.SURGE, dialect.LIGHTNING) if d is not active)):
        value = os.environ.get(name)
        if value is None:
            continue
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"${name}={value!r} is not an integer seed; unset it or set it to an int") from None
    return default


def worker_init_fn(worker_id: int, rank: int = 0) -> None:
    """Seed python, NumPy and torch in a DataLoader worker from its torch seed, rank and id."""
    base = torch.initial_seed()  # distinct per worker already (DataLoader sets base_seed + id)
    seq = [base & 0xFFFFFFFF, worker_id, rank]
    try:
        import numpy as np

        ss = np.random.SeedSequence(seq)
        np.random.seed(ss.generate_state(1)[0])
        random.seed(int(ss.generate_state(2, dtype="uint64")[1]))
    except ImportError:
        random.seed(hash(tuple(seq)))


def capture_rng_state(include_cuda: bool = True) -> dict:
    """The RNG states of python, NumPy, torch and (when initialised and ``include_cuda``) CUDA as plain
    data and tensors."""
    state = {"torch": torch.get_rng_state(), "python": _python_state_to_plain(random.getstate())}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)}
    except ImportError:
        pass
    if include_cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Put back what :func:`capture_rng_state` returned."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        np.random.set_state((s["kind"], s["keys"].numpy().astype("uint32"), s["pos"], s["has_gauss"], s["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng():
    """Run a block without disturbing the random streams of the code around it."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


@contextlib.contextmanager
def isolate_rng(include_cuda: bool = True):
    """Put python's, NumPy's and torch's random states back, on leaving the block, as they were on entering it.

    ``include_cuda=False`` leaves the CUDA generators alone (a forked process must not initialise CUDA).

    Example::

        with surge.seed.isolate_rng():
            noise = torch.rand(3)     # the code after the block draws what it would have drawn
    """
    state = capture_rng_state(include_cuda)
    try:
        yield
    finally:
        restore_rng_state(state)


def _python_state_to_plain(st):
    version, internal, gauss = st
    return [version, list(internal), gauss]
