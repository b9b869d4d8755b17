"""Timer: measure how long each loop runs, and end fit once a time budget is spent."""
from __future__ import annotations

import re
import time
from datetime import timedelta
from enum import Enum
from typing import Optional, Union

from ..states import RunningStage
from ..utils import MisconfigurationError, rank_zero_info
from .base import Callback

class Interval(str, Enum):
    """How often a :class:`Timer` checks its budget: after every training batch, or every training epoch."""

    step = "step"
    epoch = "epoch"


_DURATION = re.compile(r"(\d+):(\d\d):(\d\d):(\d\d)")


def _now() -> float:
    """The clock every Timer reads (a monotonic one: wall-clock changes do not count); tests replace it."""
    return time.monotonic()


def _parse_duration(duration) -> Optional[float]:
    """``duration`` in seconds: from a ``timedelta``, a dict of its arguments or a "DD:HH:MM:SS" string."""
    if duration is None:
        return None
    if isinstance(duration, str):
        found = _DURATION.fullmatch(duration.strip())
        if found is None:
            raise MisconfigurationError(f"`Timer(duration={duration!r})` is not a valid duration. Expected a string "
                                        f"in the format DD:HH:MM:SS (days, hours, minutes, seconds: '00:12:00:00').")
        days, hours, minutes, seconds = (int(part) for part in found.groups())
        duration = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    elif isinstance(duration, dict):
        try:
            duration = timedelta(**duration)
        except TypeError as err:
            raise MisconfigurationError(f"`Timer(duration={duration!r})`: the dict holds timedelta's arguments "
                                        f"(weeks, days, hours, minutes, seconds...): {err}") from None
    if not isinstance(duration, timedelta):
        raise MisconfigurationError(f"`Timer(duration={duration!r})`: pass a datetime.timedelta, a dict such as "
                                    f"{{'hours': 1}} or a 'DD:HH:MM:SS' string")
    return duration.total_seconds()


class Timer(Callback):
    """Time the training, validation, test and predict loops; stop fit when ``duration`` has passed.

    ``duration``: a :class:`datetime.timedelta`, a dict of its arguments (``{"hours": 1}``) or a string
    "DD:HH:MM:SS"; None only measures. ``interval="step"`` checks the budget after every training batch,
    ``"epoch"`` after every training epoch (the run then ends at an epoch boundary); fit also checks once at
    its start, so a resumed run whose budget is already spent trains no further. When the budget is spent
    the Timer sets ``trainer.should_stop`` (every process agrees: rank 0's clock decides) and, with
    ``verbose``, says so in one line.

    ``time_elapsed(stage)``, ``time_remaining(stage)``, ``start_time(stage)`` and ``end_time(stage)``
    answer in seconds for "train" (the default), "validate", "test" or "predict"; start and end are
    readings of a monotonic clock (None before that loop started or ended). The elapsed times go into
    checkpoints: a run resumed from one keeps counting its training time from where it was, so the
    budget covers the whole training, not each restart.

    Example::

        surge.Trainer(callbacks=[Timer(duration="00:12:00:00")])  # at most twelve hours of training
        Timer(duration={"minutes": 30}, interval="epoch")
    """

    def __init__(self, duration: Optional[Union[str, timedelta, dict]] = None, interval: str = "step",
                 verbose: bool = True) -> None:
        if interval not in [i.value for i in Interval]:
            raise MisconfigurationError(f"Unsupported parameter value `Timer(interval={interval})`. Possible "
                                        f"choices are: step, epoch")
        self._duration = _parse_duration(duration)
        self._interval = Interval(interval).value
        self._verbose = verbose
        self._start_time: dict[str, Optional[float]] = {stage.value: None for stage in RunningStage}
        self._end_time: dict[str, Optional[float]] = {stage.value: None for stage in RunningStage}
        self._offset = 0.0  # training time of the runs before a resume

    # ------------------------------------------------------------------ reading the clocks
    @staticmethod
    def _stage(stage) -> str:
        if isinstance(stage, RunningStage):
            return stage.value
        try:
            return RunningStage(stage).value
        except ValueError:
            raise ValueError(f"Timer: unknown stage {stage!r}; one of {[s.value for s in RunningStage]}") from None

    def start_time(self, stage: str = "train") -> Optional[float]:
        """When ``stage`` last started (a monotonic clock reading, seconds), or None."""
        return self._start_time[self._stage(stage)]

    def end_time(self, stage: str = "train") -> Optional[float]:
        """When ``stage`` last ended (a monotonic clock reading, seconds), or None while it runs or before."""
        return self._end_time[self._stage(stage)]

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds ``stage`` has run (so far, while it runs); for "train", including the runs before a resume."""
        stage = self._stage(stage)
        offset = self._offset if stage == RunningStage.TRAINING.value else 0.0
        start, end = self._start_time[stage], self._end_time[stage]
        if start is None:
            return offset
        return (_now() if end is None else end) - start + offset

    def time_remaining(self, stage: str = "train") -> Optional[float]:
        """Seconds left of ``duration`` (negative once overrun), or None without a duration."""
        if self._duration is None:
            return None
        return self._duration - self.time_elapsed(stage)

    # ------------------------------------------------------------------ each loop's start and end
    def _started(self, stage: RunningStage) -> None:
        self._start_time[stage.value], self._end_time[stage.value] = _now(), None

    def _ended(self, stage: RunningStage) -> None:
        self._end_time[stage.value] = _now()

    def on_train_start(self, trainer, module) -> None:
        self._started(RunningStage.TRAINING)

    def on_train_end(self, trainer, module) -> None:
        self._ended(RunningStage.TRAINING)

    def on_validation_start(self, trainer, module) -> None:
        self._started(RunningStage.VALIDATING)

    def on_validation_end(self, trainer, module) -> None:
        self._ended(RunningStage.VALIDATING)

    def on_test_start(self, trainer, module) -> None:
        self._started(RunningStage.TESTING)

    def on_test_end(self, trainer, module) -> None:
        self._ended(RunningStage.TESTING)

    def on_predict_start(self, trainer, module) -> None:
        self._started(RunningStage.PREDICTING)

    def on_predict_end(self, trainer, module) -> None:
        self._ended(RunningStage.PREDICTING)

    # ------------------------------------------------------------------ the budget
    def on_fit_start(self, trainer, module) -> None:
        # After a checkpoint's state is back: a budget already spent stops the run before its first batch.
        if self._duration is not None:
            self._check(trainer)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        if self._interval == "step" and self._duration is not None:
            self._check(trainer)

    def on_train_epoch_end(self, trainer, module) -> None:
        if self._interval == "epoch" and self._duration is not None:
            self._check(trainer)

    def _check(self, trainer) -> None:
        spent = trainer.strategy.broadcast(self.time_elapsed() >= self._duration)
        if spent:
            trainer.should_stop = True
            if self._verbose:
                elapsed = timedelta(seconds=int(self.time_elapsed()))
                rank_zero_info(f"Time limit reached. Elapsed time is {elapsed}. Signaling Trainer to stop.")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"time_elapsed": {stage.value: self.time_elapsed(stage) for stage in RunningStage}}

    def load_state_dict(self, state: dict) -> None:
        self._offset = float(state.get("time_elapsed", {}).get(RunningStage.TRAINING.value, 0.0))
