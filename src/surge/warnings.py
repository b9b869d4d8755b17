"""surge's warning categories, and the rank-zero helpers that emit the less common ones.

:class:`PossibleUserWarning` marks a warning about a run that works but is probably not what its author
meant (a validation loader without ``validation_step``, fewer batches than ``log_every_n_steps``...).
Filter them all at once::

    surge.warnings.disable_possible_user_warnings()
    # or: warnings.filterwarnings("ignore", category=surge.warnings.PossibleUserWarning)
    # or, before the run starts: export POSSIBLE_USER_WARNINGS=off   (or 0)

Importing this module costs nothing beyond the standard library (``import surge`` stays cheap).
"""
from __future__ import annotations

import logging
import os
import warnings

from .utils import rank_zero_only

__all__ = ["PossibleUserWarning", "SurgeDeprecationWarning", "disable_possible_user_warnings",
           "rank_zero_debug", "rank_zero_deprecation"]

_log = logging.getLogger("surge")


class PossibleUserWarning(UserWarning):
    """A run that works but is probably not what was meant; ``disable_possible_user_warnings()`` silences
    every one of them (Lightning's class of the same name is this one under ``surge.lightning``)."""


class SurgeDeprecationWarning(DeprecationWarning):
    """A name or argument that still works and will be removed."""


def disable_possible_user_warnings(module: str = "") -> None:
    """Ignore every :class:`PossibleUserWarning` (those raised from ``module`` only, when given, a regex
    matched against the warning's module name)."""
    warnings.filterwarnings("ignore", category=PossibleUserWarning, module=module)


@rank_zero_only
def rank_zero_deprecation(message: str, stacklevel: int = 2) -> None:
    """Warn with :class:`SurgeDeprecationWarning` on global rank 0 only (``stacklevel`` counts as in
    :func:`surge.utils.rank_zero_warn`: 2 names the line that called this function, 3 its caller's)."""
    warnings.warn(message, SurgeDeprecationWarning, stacklevel=stacklevel + 1)


@rank_zero_only
def rank_zero_debug(message: str) -> None:
    """Log ``message`` at DEBUG level (logger ``"surge"``) on global rank 0 only."""
    _log.debug(message)


if os.environ.get("POSSIBLE_USER_WARNINGS", "").lower() in ("0", "off"):
    disable_possible_user_warnings()
