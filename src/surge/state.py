"""TrainerState: every counter of a run in one place; a checkpoint stores exactly its fields."""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Optional, Union

from .states import RunningStage, TrainerFn, TrainerStatus

# What ``stage`` may be set to, by value: a run's Trainer method, or the sanity check inside fit.
_STAGES = {"fit": TrainerFn.FITTING, "validate": RunningStage.VALIDATING, "test": RunningStage.TESTING,
           "predict": RunningStage.PREDICTING, "sanity_check": RunningStage.SANITY_CHECKING,
           "train": RunningStage.TRAINING}


@dataclass(init=False)
class TrainerState:
    """Where a run is.

    Attributes (the fields: what a checkpoint stores, as plain data):
        stage: "fit", "validate", "test", "predict", "sanity_check" or None between runs, held as the
            matching :class:`~surge.states.TrainerFn` / :class:`~surge.states.RunningStage` member (equal to
            the plain string). Inside ``fit`` it stays "fit" while validating; ``trainer.validating`` tells.
        epoch: the current (0-based) training epoch; after fit, the number of epochs completed.
        global_step: optimizer steps taken (one per optimisation step, the unit of ``max_steps``).
        batch_idx: index of the next training batch within the current epoch.
        batches_seen: training batches consumed in total (drives accumulation and ``val_check_interval``).
        should_stop: set by ``EarlyStopping`` or the user to end fit at the next safe point.

    Derived from ``stage`` as it changes (not stored in checkpoints):
        fn: the :class:`~surge.states.TrainerFn` of the current or last run (None before the first).
        status: a :class:`~surge.states.TrainerStatus`: INITIALIZING before the first run, RUNNING while
            ``stage`` is set, then FINISHED, or INTERRUPTED when the run ended by an exception.

    Example::

        trainer.fit(model)
        trainer.state.fn == "fit" and trainer.state.status == TrainerStatus.FINISHED   # True
    """

    stage: Union[TrainerFn, RunningStage, None]
    epoch: int
    global_step: int
    batch_idx: int
    batches_seen: int
    should_stop: bool

    def __init__(self, stage: Optional[str] = None, epoch: int = 0, global_step: int = 0, batch_idx: int = 0,
                 batches_seen: int = 0, should_stop: bool = False, *,
                 fn: Optional[str] = None, status: Union[str, TrainerStatus] = TrainerStatus.INITIALIZING):
        self._fn = _as_fn(fn)
        self._status = TrainerStatus.from_str(status, source="value")
        self._error_at_start = None
        self._stage = _as_stage(stage)
        self.epoch, self.global_step, self.batch_idx = epoch, global_step, batch_idx
        self.batches_seen, self.should_stop = batches_seen, should_stop

    # ``stage`` is a property (a field all the same: fields(), asdict() and == read it as one), so that the
    # counters, set at every training step, are plain attributes.
    def _get_stage(self) -> Union[TrainerFn, RunningStage, None]:
        return self._stage

    def _set_stage(self, value) -> None:
        value = _as_stage(value)
        self._follow(self._stage, value)
        self._stage = value

    stage = property(_get_stage, _set_stage)  # noqa: F811 (the field declared above)

    def _follow(self, old, new) -> None:
        """Update ``fn`` and ``status`` for a change of ``stage`` from ``old`` to ``new``: a run starts when
        ``stage`` leaves None and ends when it returns to None; changes between (the sanity check) keep ``fn``."""
        if old is None and new is not None:
            fn = TrainerFn.FITTING if new in ("fit", "sanity_check", "train") else TrainerFn.from_str(new.value, "value")
            self._fn = fn
            self._status = TrainerStatus.RUNNING
            # The run may start inside the caller's own ``except`` block: only a newer exception interrupts it.
            self._error_at_start = sys.exc_info()[1]
        elif old is not None and new is None:
            # The Trainer sets None in its ``finally``: an exception on its way out is visible there.
            error = sys.exc_info()[1]
            ended_by_error = error is not None and error is not self._error_at_start
            self._status = TrainerStatus.INTERRUPTED if ended_by_error else TrainerStatus.FINISHED
            self._error_at_start = None

    # ------------------------------------------------------------------ derived
    @property
    def fn(self) -> Optional[TrainerFn]:
        """The Trainer method running now, or the last one that ran (None before the first run)."""
        return self._fn

    @fn.setter
    def fn(self, value: Optional[str]) -> None:
        self._fn = _as_fn(value)

    @property
    def status(self) -> TrainerStatus:
        return self._status

    @status.setter
    def status(self, value: Union[str, TrainerStatus]) -> None:
        self._status = TrainerStatus.from_str(value, source="value")

    @property
    def finished(self) -> bool:
        """The last run ended normally."""
        return self._status == TrainerStatus.FINISHED

    @property
    def stopped(self) -> bool:
        """The last run ended, normally or by an exception."""
        return self._status.stopped

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The fields as plain data (an enum member becomes its string): ``torch.load(weights_only=True)`` reads it."""
        return {key: value.value if isinstance(value, Enum) else value for key, value in asdict(self).items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the fields from :meth:`state_dict`; ``fn`` and ``status`` stay those of the run loading it."""
        names = {f.name for f in fields(self)}
        for key, value in state.items():
            if key == "stage":
                self._stage = _as_stage(value)  # a restored stage neither starts nor ends a run
            elif key in names:
                setattr(self, key, value)


def _as_stage(value) -> Union[TrainerFn, RunningStage, None]:
    if value is None or isinstance(value, (TrainerFn, RunningStage)):
        return value
    member = _STAGES.get(value.lower()) if isinstance(value, str) else None
    if member is None:
        raise ValueError(f"TrainerState.stage must be one of {sorted(_STAGES)} or None, got {value!r}")
    return member


def _as_fn(value) -> Optional[TrainerFn]:
    if value is None or isinstance(value, TrainerFn):
        return value
    if isinstance(value, str):
        member = TrainerFn.try_from_str(value, source="any")
        if member is not None:
            return member
    raise ValueError(f"TrainerState.fn must be one of {[m.value for m in TrainerFn]} or None, got {value!r}")
