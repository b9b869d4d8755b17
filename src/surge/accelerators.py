"""Which device kind a run uses (``accelerator=``) and which devices of it (``devices=``)."""
from __future__ import annotations

from typing import Union

import torch

from .utils import MisconfigurationError

ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")


def resolve_accelerator(value) -> str:
    """``"cpu"``, ``"cuda"`` or ``"mps"`` for an ``accelerator=`` argument; "auto" picks a GPU when present."""
    if not isinstance(value, str) or value.lower() not in ACCELERATORS:
        raise MisconfigurationError(f"accelerator={value!r} is not supported; choose one of {', '.join(ACCELERATORS)}")
    value = value.lower()
    if value == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if value == "gpu":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        raise MisconfigurationError("accelerator='gpu' but no GPU is available here; use accelerator='cpu' or 'auto'")
    if value == "cuda" and not torch.cuda.is_available():
        raise MisconfigurationError("accelerator='cuda' but torch finds no CUDA device here; use accelerator='cpu' or 'auto'")
    if value == "mps" and not torch.backends.mps.is_available():
        raise MisconfigurationError("accelerator='mps' but MPS is not available here; use accelerator='cpu' or 'auto'")
    return value


def available_count(accelerator: str) -> int:
    if accelerator == "cuda":
        return torch.cuda.device_count()
    if accelerator == "mps":
        return 1
    from .cores import usable_cores

    return usable_cores()


def parse_devices(value: Union[int, str, list, tuple], accelerator: str) -> list[int]:
    """The device indices a ``devices=`` argument names on ``accelerator``.

    ``"auto"`` → every GPU (one process on CPU); an int N → the first N (``-1``: all);
    a list ``[0, 2]`` or a string ``"0,2"`` → those indices. On CPU the indices only count processes.
    """
    original = value
    if isinstance(value, str):
        text = value.strip()
        if text == "auto":
            value = available_count(accelerator) if accelerator == "cuda" else 1
        elif text.lstrip("-").isdigit():
            value = int(text)
        else:
            try:
                value = [int(p) for p in text.split(",") if p.strip()]
            except ValueError:
                value = None
    if isinstance(value, bool) or value is None:
        value = None
    elif isinstance(value, int):
        if value == -1:
            value = available_count(accelerator)
        if value <= 0:
            raise MisconfigurationError(f"devices={original!r} must be a positive number of devices, -1, 'auto' or a list of indices")
        value = list(range(value))
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise MisconfigurationError(f"devices={original!r} is not understood; give an int, -1, 'auto', a list like [0, 1] or a string like '0,1'")
    ids = list(value)
    if len(set(ids)) != len(ids) or min(ids) < 0:
        raise MisconfigurationError(f"devices={original!r} names a device twice or a negative index")
    if accelerator == "cpu" and len(ids) > available_count("cpu"):
        import warnings

        from .warnings import PossibleUserWarning

        warnings.warn(f"accelerator='cpu', devices={original!r} starts {len(ids)} processes on a machine with "
                      f"{available_count('cpu')} CPU cores: they take turns on the cores and every step slows down; "
                      f"devices={available_count('cpu')} or fewer is faster", PossibleUserWarning, stacklevel=3)
    if accelerator in ("cuda", "mps"):
        have = available_count(accelerator)
        if max(ids) >= have:
            raise MisconfigurationError(
                f"devices={original!r} asks for {accelerator} device(s) {ids} but this machine has {have}"
            )
    return ids
