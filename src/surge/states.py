"""Names for where a Trainer is: which method runs (:class:`TrainerFn`), which loop (:class:`RunningStage`),
and whether it runs at all (:class:`TrainerStatus`).

They are ``str`` enums that compare equal to their value, ignoring case, so code that compares with
plain strings keeps working::

    TrainerFn.FITTING == "fit"            # True
    trainer.state.fn == TrainerFn.TESTING  # inside trainer.test()

``TrainerState`` (:mod:`surge.state`) holds them; these are Lightning's enums under ``surge.lightning``.
"""
from __future__ import annotations

from enum import Enum
from typing import Optional

__all__ = ["StrEnum", "TrainerFn", "RunningStage", "TrainerStatus"]


class StrEnum(str, Enum):
    """A ``str`` enum equal to its value in any case: ``TrainerFn.FITTING == "FIT"``, and hashed alike, so
    members and plain strings are interchangeable as dict keys."""

    def __eq__(self, other: object) -> bool:
        other = other.value if isinstance(other, Enum) else other
        if not isinstance(other, str):
            return NotImplemented
        return self.value.lower() == other.lower()

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash(self.value.lower())

    @classmethod
    def from_str(cls, value: str, source: str = "key"):
        """The member whose name (``source="key"``), value (``"value"``) or either (``"any"``) is ``value``,
        ignoring case; a ValueError listing the accepted ones otherwise.

        Example: ``TrainerFn.from_str("fit", source="value") is TrainerFn.FITTING``.
        """
        if source not in ("key", "value", "any"):
            raise ValueError(f"{cls.__name__}.from_str(source={source!r}): choose 'key', 'value' or 'any'")
        if isinstance(value, cls):
            return value
        value = value.value if isinstance(value, Enum) else value
        for member in cls:
            if source in ("key", "any") and member.name.lower() == str(value).lower():
                return member
            if source in ("value", "any") and member.value.lower() == str(value).lower():
                return member
        accepted = [m.name for m in cls] if source == "key" else [m.value for m in cls]
        raise ValueError(f"{value!r} is not a {cls.__name__} {'name' if source == 'key' else 'value'}; "
                         f"accepted: {accepted}")

    @classmethod
    def try_from_str(cls, value: str, source: str = "key"):
        """:meth:`from_str`, or None where it would raise."""
        try:
            return cls.from_str(value, source)
        except ValueError:
            return None


class TrainerFn(StrEnum):
    """The Trainer method that runs: ``fit``, ``validate``, ``test`` or ``predict``."""

    FITTING = "fit"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"


class RunningStage(StrEnum):
    """The loop that runs. ``fit`` runs SANITY_CHECKING, TRAINING and VALIDATING; ``validate``,
    ``test`` and ``predict`` run VALIDATING, TESTING and PREDICTING."""

    TRAINING = "train"
    SANITY_CHECKING = "sanity_check"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"

    @property
    def evaluating(self) -> bool:
        """Validation, testing or the sanity check (the loops that run without gradients)."""
        return self in (RunningStage.VALIDATING, RunningStage.TESTING, RunningStage.SANITY_CHECKING)

    @property
    def dataloader_prefix(self) -> Optional[str]:
        """The prefix of this stage's dataloader hook: ``val`` for validation and the sanity check, else the value."""
        if self in (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING):
            return "val"
        return self.value


class TrainerStatus(StrEnum):
    """INITIALIZING until a run starts, RUNNING during it, then FINISHED, or INTERRUPTED when it ended by an exception."""

    INITIALIZING = "initializing"
    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"

    @property
    def stopped(self) -> bool:
        return self in (TrainerStatus.FINISHED, TrainerStatus.INTERRUPTED)
