"""EarlyStopping: end fit when a monitored metric stops improving."""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..utils import MisconfigurationError, rank_zero_info
from .base import Callback


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has not improved by ``min_delta`` for ``patience`` checks.

    Checks happen at the end of each validation (or each training epoch when
    ``check_on_train_epoch_end=True`` or there is no validation). Every process decides the same.

    Example::

        surge.Trainer(callbacks=[EarlyStopping("val_loss", patience=3, mode="min")])
    """

    reads_epoch_metrics = True

    def __init__(self, monitor: str, min_delta: float = 0.0, patience: int = 3, verbose: bool = False,
                 mode: str = "min", strict: bool = True, check_finite: bool = True,
                 stopping_threshold: Optional[float] = None, divergence_threshold: Optional[float] = None,
                 check_on_train_epoch_end: Optional[bool] = None):
        if mode not in ("min", "max"):
            raise MisconfigurationError(f"EarlyStopping(mode={mode!r}): choose 'min' or 'max'")
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
        self.stopping_reason: Optional[str] = None

    @property
    def state_key(self) -> str:
        return f"EarlyStopping{{monitor={self.monitor!r}, mode={self.mode!r}}}"

    def on_train_epoch_end(self, trainer, module) -> None:
        if self._on_train_epoch_end(trainer):
            self._check(trainer)

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking or trainer.state.stage != "fit" or self._on_train_epoch_end(trainer):
            return
        self._check(trainer)

    def _on_train_epoch_end(self, trainer) -> bool:
        if self.check_on_train_epoch_end is not None:
            return self.check_on_train_epoch_end
        return not trainer.val_dataloaders or trainer.limit_val_batches == 0

    def _check(self, trainer) -> None:
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            if self.strict:
                raise MisconfigurationError(
                    f"EarlyStopping(monitor={self.monitor!r}) found no such metric; logged: {sorted(metrics)}. "
                    f"Log it with self.log({self.monitor!r}, ...) or pass strict=False"
                )
            return
        current = metrics[self.monitor].detach().float().cpu()
        should_stop, reason = self._evaluate(current)
        # Every process must take the same decision, or one would wait for the others forever.
        should_stop = trainer.strategy.reduce_boolean_decision(should_stop, all=False)
        if should_stop:
            trainer.should_stop = True
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason = reason
            if self.verbose:
                rank_zero_info(f"EarlyStopping: {reason}")

    def _evaluate(self, current: torch.Tensor) -> tuple[bool, Optional[str]]:
        better = torch.lt if self.mode == "min" else torch.gt
        if self.check_finite and not torch.isfinite(current):
            return True, f"{self.monitor} = {float(current)} is not finite"
        if self.stopping_threshold is not None and better(current, torch.tensor(self.stopping_threshold)):
            return True, f"{self.monitor} = {float(current):.5g} reached the stopping threshold {self.stopping_threshold}"
        if self.divergence_threshold is not None and not better(current, torch.tensor(self.divergence_threshold)):
            return True, f"{self.monitor} = {float(current):.5g} diverged past {self.divergence_threshold}"
        if better(current - self.min_delta, self.best_score):
            self.best_score = current
            self.wait_count = 0
            return False, None
        self.wait_count += 1
        if self.wait_count >= self.patience:
            return True, (f"{self.monitor} did not improve for {self.wait_count} checks; "
                          f"best {float(self.best_score):.5g}")
        return False, None

    def state_dict(self) -> dict:
        return {"wait_count": self.wait_count, "stopped_epoch": self.stopped_epoch,
                "best_score": float(self.best_score), "patience": self.patience}

    def load_state_dict(self, state: dict) -> None:
        self.wait_count = state["wait_count"]
        self.stopped_epoch = state["stopped_epoch"]
        self.best_score = torch.tensor(state["best_score"])
