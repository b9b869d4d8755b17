"""EarlyStopping: end fit when a monitored metric stops improving."""
from __future__ import annotations

import math
from enum import Enum
from typing import Optional

import torch

from ..states import TrainerFn
from ..utils import MisconfigurationError, rank_zero_info
from .base import Callback


class EarlyStoppingReason(Enum):
    """Why :class:`EarlyStopping` ended fit (its ``stopping_reason``); the value is what checkpoints store."""

    NOT_STOPPED = 0           # fit ran to its own end (or has not ended yet)
    STOPPING_THRESHOLD = 1    # the metric got better than ``stopping_threshold``
    DIVERGENCE_THRESHOLD = 2  # the metric got worse than ``divergence_threshold``
    PATIENCE_EXHAUSTED = 3    # ``patience`` checks in a row without improvement
    NON_FINITE_METRIC = 4     # the metric became NaN or infinite (``check_finite=True``)


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved by ``min_delta`` for ``patience`` checks.

    Checks happen at the end of each validation (or each training epoch when
    ``check_on_train_epoch_end=True`` or there is no validation), during ``fit`` only and not under
    ``fast_dev_run``. Every process decides the same.

    After fit, ``stopping_reason`` is an :class:`EarlyStoppingReason` (``NOT_STOPPED`` when it did not
    stop the run) and ``stopping_reason_message`` says why in words (None when it did not stop it); both
    are saved in checkpoints. ``verbose=True`` prints each improvement and the reason for stopping.

    Example::

        es = EarlyStopping("val_loss", patience=3, mode="min")
        surge.Trainer(callbacks=[es]).fit(model)
        if es.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED:
            print(es.stopping_reason_message)
    """

    reads_epoch_metrics = True

    def __init__(self, monitor: str, min_delta: float = 0.0, patience: int = 3, verbose: bool = False,
                 mode: str = "min", strict: bool = True, check_finite: bool = True,
                 stopping_threshold: Optional[float] = None, divergence_threshold: Optional[float] = None,
                 check_on_train_epoch_end: Optional[bool] = None):
        if mode not in ("min", "max"):
            raise MisconfigurationError(f"EarlyStopping(mode={mode!r}): `mode` can be 'min' or 'max', got {mode}")
        if not isinstance(patience, int) or patience < 0:
            raise MisconfigurationError(f"EarlyStopping(patience={patience!r}) must be an int >= 0")
        self.monitor, self.mode, self.patience, self.verbose = monitor, mode, patience, verbose
        self.min_delta = abs(min_delta) * (1 if mode == "max" else -1)
        self.strict, self.check_finite = strict, check_finite
        self.stopping_threshold, self.divergence_threshold = stopping_threshold, divergence_threshold
        self.check_on_train_epoch_end = check_on_train_epoch_end
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: Optional[str] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @property
    def _legacy_state_keys(self) -> tuple:
        return (f"EarlyStopping{{monitor={self.monitor!r}, mode={self.mode!r}}}",)

    def on_train_epoch_end(self, trainer, module) -> None:
        if self._on_train_epoch_end(trainer) and not self._skip(trainer):
            self._run_early_stopping_check(trainer)

    def on_validation_end(self, trainer, module) -> None:
        if self._skip(trainer) or self._on_train_epoch_end(trainer):
            return
        self._run_early_stopping_check(trainer)

    @staticmethod
    def _skip(trainer) -> bool:
        # Only fit can be stopped; the sanity check's numbers come from an untrained model.
        return trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or bool(trainer.fast_dev_run)

    def _on_train_epoch_end(self, trainer) -> bool:
        if self.check_on_train_epoch_end is not None:
            return self.check_on_train_epoch_end
        return not trainer._validates_in_fit

    def _run_early_stopping_check(self, trainer) -> None:
        """One check of the monitored value (Lightning's name for it: subclasses that override it keep working)."""
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            if self.strict:
                raise MisconfigurationError(
                    f"EarlyStopping(monitor={self.monitor!r}) found no such metric; logged: {sorted(metrics)}. "
                    f"Log it with self.log({self.monitor!r}, ...) or pass strict=False"
                )
            return
        current = metrics[self.monitor].detach().float().cpu().squeeze()
        reason, message = self._evaluate(current)
        # Every process must take the same decision, or one would wait for the others forever.
        should_stop = trainer.strategy.reduce_boolean_decision(reason is not None, all=False)
        if reason is not None:
            self.stopping_reason = reason
        if should_stop:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = message if reason is not None else \
                f"another process's check of {self.monitor} stopped fit"
        if message is not None and self.verbose:
            rank_zero_info(f"EarlyStopping: {message}")

    def _evaluate(self, current: torch.Tensor) -> tuple[Optional[EarlyStoppingReason], Optional[str]]:
        """Why to stop now, in an enum and in words; (None, None) to go on (or, with ``verbose``, None and
        what improved)."""
        better = torch.lt if self.mode == "min" else torch.gt
        sign = "<" if self.mode == "min" else ">"
        if self.check_finite and not torch.isfinite(current):
            return EarlyStoppingReason.NON_FINITE_METRIC, (
                f"Monitored metric {self.monitor} = {float(current)} is not finite; the best value was "
                f"{float(self.best_score):.5g}, so fit stops")
        if self.stopping_threshold is not None and better(current, torch.tensor(self.stopping_threshold)):
            return EarlyStoppingReason.STOPPING_THRESHOLD, (
                f"Stopping threshold reached: {self.monitor} = {float(current):.5g} {sign} {self.stopping_threshold}, "
                f"so fit stops")
        if self.divergence_threshold is not None and not better(current, torch.tensor(self.divergence_threshold)):
            return EarlyStoppingReason.DIVERGENCE_THRESHOLD, (
                f"Divergence threshold reached: {self.monitor} = {float(current):.5g} diverged past "
                f"{self.divergence_threshold} (mode={self.mode!r}), so fit stops")
        if better(current - self.min_delta, self.best_score):
            improved = (f"{self.monitor} improved by {abs(float(self.best_score - current)):.5g} to {float(current):.5g}"
                        if torch.isfinite(self.best_score) else f"{self.monitor} improved to {float(current):.5g}")
            self.best_score = current
            self.wait_count = 0
            return None, improved if self.verbose else None
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return EarlyStoppingReason.PATIENCE_EXHAUSTED, (
                f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} checks; "
                f"best score {float(self.best_score):.5g}, so fit stops")
        return None, None

    def state_dict(self) -> dict:
        return {"wait_count": self.wait_count, "stopped_epoch": self.stopped_epoch,
                "best_score": float(self.best_score), "patience": self.patience,
                "stopping_reason": self.stopping_reason.value, "stopping_reason_message": self.stopping_reason_message}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s values; a state saved before the reason was recorded reads as NOT_STOPPED."""
        self.wait_count = state["wait_count"]
        self.stopped_epoch = state["stopped_epoch"]
        self.best_score = torch.as_tensor(state["best_score"], dtype=torch.float32).detach().clone()
        self.stopping_reason = EarlyStoppingReason(state.get("stopping_reason", EarlyStoppingReason.NOT_STOPPED.value))
        self.stopping_reason_message = state.get("stopping_reason_message")
