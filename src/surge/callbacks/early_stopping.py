"""EarlyStopping: end fit when a monitored metric stops improving."""
from __future__ import annotations

import logging
import math
from enum import Enum
from typing import Optional

import torch

from ..states import TrainerFn
from ..utils import MisconfigurationError
from .base import Callback

# Where verbose messages go (``_log_info``): this logger, and printed unless logging shows it (a handler, level INFO).
log = logging.getLogger(__name__)


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

    ``verbose=True`` reports each improvement and the reason for stopping, from every process (prefixed with
    its rank when there are several) or, with ``log_rank_zero_only=True``, from rank 0 only. The decision
    itself is :meth:`_evaluate_stopping_criteria`, which a subclass may override (Lightning's contract:
    ``(should_stop, reason)`` for the monitored value).

    After fit, ``stopping_reason`` is an :class:`EarlyStoppingReason` (``NOT_STOPPED`` when it did not
    stop the run) and ``stopping_reason_message`` says why in words (None when it did not stop it); both
    are saved in checkpoints.

    Example::

        es = EarlyStopping("val_loss", patience=3, mode="min")
        surge.Trainer(callbacks=[es]).fit(model)
        if es.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED:
            print(es.stopping_reason_message)
    """

    reads_epoch_metrics = True
    mode_dict = {"min": torch.lt, "max": torch.gt}  # "better than" for each mode
    order_dict = {"min": "<", "max": ">"}

    def __init__(self, monitor: str, min_delta: float = 0.0, patience: int = 3, verbose: bool = False,
                 mode: str = "min", strict: bool = True, check_finite: bool = True,
                 stopping_threshold: Optional[float] = None, divergence_threshold: Optional[float] = None,
                 check_on_train_epoch_end: Optional[bool] = None, log_rank_zero_only: bool = False):
        if mode not in ("min", "max"):
            raise MisconfigurationError(f"EarlyStopping(mode={mode!r}): `mode` can be 'min' or 'max', got {mode}")
        if not isinstance(patience, int) or patience < 0:
            raise MisconfigurationError(f"EarlyStopping(patience={patience!r}) must be an int >= 0")
        self.monitor, self.mode, self.patience, self.verbose = monitor, mode, patience, verbose
        self.min_delta = abs(min_delta) * (1 if mode == "max" else -1)
        self.strict, self.check_finite = strict, check_finite
        self.stopping_threshold, self.divergence_threshold = stopping_threshold, divergence_threshold
        self.check_on_train_epoch_end = check_on_train_epoch_end
        self.log_rank_zero_only = log_rank_zero_only
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message: Optional[str] = None

    @property
    def monitor_op(self):
        """``torch.lt`` in mode "min", ``torch.gt`` in mode "max": whether a value is better than another."""
        return self.mode_dict[self.mode]

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
        if trainer.fast_dev_run:  # (the hooks skip it already; a subclass may call this itself)
            return
        if self.monitor not in metrics:
            if self.strict:
                raise MisconfigurationError(
                    f"EarlyStopping(monitor={self.monitor!r}) found no such metric; logged: {sorted(metrics)}. "
                    f"Log it with self.log({self.monitor!r}, ...) or pass strict=False"
                )
            return
        current = metrics[self.monitor].detach().float().cpu().squeeze()
        stop_here, reason = self._evaluate_stopping_criteria(current)
        # Every process must take the same decision, or one would wait for the others forever.
        should_stop = trainer.strategy.reduce_boolean_decision(bool(stop_here), all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason_message = reason if stop_here else \
                f"another process's check of {self.monitor} stopped fit"
        if reason and self.verbose:
            self._log_info(trainer, f"EarlyStopping: {reason}", self.log_rank_zero_only)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, Optional[str]]:
        """Whether to stop at the monitored value ``current``, and why in words (or what improved; None when
        nothing did). Records the why in ``stopping_reason`` when it stops, and keeps the best score and the
        count of checks without improvement."""
        better, sign = self.monitor_op, self.order_dict[self.mode]
        if self.check_finite and not torch.isfinite(current):
            self.stopping_reason = EarlyStoppingReason.NON_FINITE_METRIC
            return True, (f"Monitored metric {self.monitor} = {float(current)} is not finite; the best value was "
                          f"{float(self.best_score):.5g}, so fit stops")
        if self.stopping_threshold is not None and better(current, torch.tensor(self.stopping_threshold)):
            self.stopping_reason = EarlyStoppingReason.STOPPING_THRESHOLD
            return True, (f"Stopping threshold reached: {self.monitor} = {float(current):.5g} {sign} "
                          f"{self.stopping_threshold}, so fit stops")
        if self.divergence_threshold is not None and not better(current, torch.tensor(self.divergence_threshold)):
            self.stopping_reason = EarlyStoppingReason.DIVERGENCE_THRESHOLD
            return True, (f"Divergence threshold reached: {self.monitor} = {float(current):.5g} diverged past "
                          f"{self.divergence_threshold} (mode={self.mode!r}), so fit stops")
        if better(current - self.min_delta, self.best_score):
            improved = (f"{self.monitor} improved by {abs(float(self.best_score - current)):.5g} to {float(current):.5g}"
                        if torch.isfinite(self.best_score) else f"{self.monitor} improved to {float(current):.5g}")
            self.best_score = current
            self.wait_count = 0
            return False, improved
        self.wait_count += 1
        if self.wait_count >= self.patience:
            self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
            return True, (f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} checks; "
                          f"best score {float(self.best_score):.5g}, so fit stops")
        return False, None

    @staticmethod
    def _log_info(trainer, message: str, log_rank_zero_only: bool) -> None:
        """Report ``message`` from this process: prefixed with its rank when there are several, and not at
        all from ranks other than 0 with ``log_rank_zero_only``. It goes to the module's logger, and is also
        printed unless the program's logging shows it (a handler up the tree and level INFO enabled)."""
        rank = trainer.global_rank if trainer.world_size > 1 else None
        if rank is not None:
            if log_rank_zero_only and rank != 0:
                return
            message = f"[rank: {rank}] {message}"
        log.info(message)
        if not (log.hasHandlers() and log.isEnabledFor(logging.INFO)):  # nobody would see it: verbose asked to
            print(message, flush=True)

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
