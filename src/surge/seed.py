"""Seeding and random-number-generator state, for reproducible and resumable runs."""
from __future__ import annotations

import contextlib
import os
import random
from typing import Optional

import torch


def seed_everything(seed: Optional[int] = None, workers: bool = False) -> int:
    """Seed python's ``random``, NumPy and torch (all devices) with ``seed`` and return it.

    ``seed=None`` takes ``$SURGE_GLOBAL_SEED`` or 0. ``workers=True`` makes surge give each
    DataLoader worker its own derived seed (so augmentations differ across workers but repeat
    across runs).

    Example::

        surge.seed_everything(42, workers=True)
    """
    if seed is None:
        seed = int(os.environ.get("SURGE_GLOBAL_SEED", 0))
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed_everything: seed must be an int, got {seed!r}")
    max_seed = 2**32 - 1
    if not 0 <= seed <= max_seed:
        raise ValueError(f"seed_everything: seed must be in [0, {max_seed}], got {seed}")
    os.environ["SURGE_GLOBAL_SEED"] = str(seed)
    os.environ["SURGE_SEED_WORKERS"] = "1" if workers else "0"
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


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


def capture_rng_state() -> dict:
    """The RNG states of python, NumPy, torch and CUDA as plain data and tensors."""
    state = {"torch": torch.get_rng_state(), "python": _python_state_to_plain(random.getstate())}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)}
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
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


def _python_state_to_plain(st):
    version, internal, gauss = st
    return [version, list(internal), gauss]
