"""Small helpers shared across surge: rank-zero printing and warnings."""
from __future__ import annotations

import functools
import os
import warnings


def _env_rank() -> int:
    # The launcher and torchrun/SLURM put the rank into the environment before any user code runs,
    # so this is right even before torch.distributed is initialised.
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def rank_zero_only(fn):
    """Decorate ``fn`` so it runs on global rank 0 only and returns ``None`` elsewhere.

    Example::

        @surge.rank_zero_only
        def report(msg):
            print(msg)
    """

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        if rank_zero_only.rank == 0:
            return fn(*args, **kwargs)
        return None

    return wrapped


rank_zero_only.rank = _env_rank()


@rank_zero_only
def rank_zero_warn(message: str, category=UserWarning, stacklevel: int = 2) -> None:
    warnings.warn(message, category, stacklevel=stacklevel + 1)


@rank_zero_only
def rank_zero_info(message: str) -> None:
    print(message, flush=True)


class SurgeError(ValueError):
    """Raised for a user mistake surge recognises: bad arguments, bad hook return values, bad files."""


class MisconfigurationError(SurgeError):
    """An argument or a combination of arguments that cannot work."""
