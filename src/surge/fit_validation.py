"""When validation runs inside fit, and the sanity check before it; mixed into the fit loop (:class:`FitLoop`).

``val_check_interval`` (a fraction of the epoch, a number of batches, or a duration) and
``check_val_every_n_epoch`` decide when; validation leaves the random streams as training had them.
"""
from __future__ import annotations

import contextlib
import math
import time

from .results import Results
from .seed import capture_rng_state, preserved_rng, restore_rng_state


class ValidationInFit:
    """The fit loop's validation: when it is due, running it, and the sanity check."""

    def _validates_now(self) -> bool:
        """Whether this fit validates in the current epoch (``check_val_every_n_epoch``)."""
        return self._validates_in_fit and self._validates_on_epoch(self.state.epoch)

    def _val_checks_inside_epoch(self, limit) -> bool:
        """Whether ``_val_due`` can say yes before this epoch's last batch. With the default
        ``val_check_interval=1.0`` it cannot (validation runs at the epoch's end), and the loop skips the check."""
        if not self._validates_now():
            return False  # (nothing inside an epoch turns validation on)
        interval = self.val_check_interval
        return self._val_check_seconds is not None or not isinstance(interval, float) or (
            interval != 1.0 and limit != math.inf)

    def _val_due(self, batch_idx: int, limit, end_of_epoch: bool) -> bool:
        if not self._validates_in_fit:
            return False
        every_n = self.check_val_every_n_epoch
        if every_n is not None and (self.state.epoch + 1) % every_n:
            return False
        if self._val_check_seconds is not None:  # by the clock, checked at batch ends (not again at the epoch's end)
            return not end_of_epoch and time.monotonic() - self._last_val_time >= self._val_check_seconds
        interval = self.val_check_interval
        if isinstance(interval, float):
            if end_of_epoch:  # the last batch is a check point too when the interval divides the epoch
                return interval == 1.0 or limit == math.inf or limit % max(1, int(limit * interval)) == 0
            if interval == 1.0 or limit == math.inf:
                return False
            every = max(1, int(limit * interval))
            return (batch_idx + 1) % every == 0 and batch_idx + 1 != limit
        if end_of_epoch:
            return False
        count = self.state.batches_seen if every_n is None else batch_idx + 1
        return count % interval == 0

    def _validation_in_fit(self) -> None:
        train_results = self._results
        # Validation leaves the random streams as it found them: training draws the same numbers with or
        # without it. A checkpoint written meanwhile (ModelCheckpoint.on_validation_end) records this state,
        # the one training goes on with, not what validation left (its loader alone draws a seed).
        self._training_rng = capture_rng_state()
        try:
            self._setup_val_data()  # the first time, or again when a reload is due
            if not self._validates_in_fit:  # the loaders requested now have no batches
                return
            self._run_eval("validate", self._val_loaders, self.num_val_batches)
        finally:
            restore_rng_state(self._training_rng)
            self._training_rng = None
            self._last_val_time = time.monotonic()  # a duration val_check_interval counts from here
        self._results = train_results  # the module's modes are back (on_validation_model_train, or as they were)

    @contextlib.contextmanager
    def _rng_of_training(self):
        """Inside validation during fit: the random streams as training left them, for the checkpoint
        written in this block; validation's own are back after it. Elsewhere: nothing changes."""
        training = getattr(self, "_training_rng", None)
        if training is None:
            yield
            return
        validation = capture_rng_state()
        restore_rng_state(training)
        try:
            yield
        finally:
            restore_rng_state(validation)

    def _sanity_check(self) -> None:
        n = self.num_sanity_val_steps
        if n == 0 or not self._val_source or self._ckpt_path is not None:
            return
        stage = self.state.stage
        self.state.stage = "sanity_check"
        try:
            # Inside the sanity check, as Lightning requests them, and like the whole check leaving the random
            # streams as it found them (a val dataset drawn at request time draws nothing training would see).
            with preserved_rng():
                self._setup_val_data()
        finally:
            self.state.stage = stage
        if not self._validates_in_fit:
            return
        limits = [nb if n == -1 else min(n, nb) for nb in self.num_val_batches]
        self.num_sanity_val_batches = limits
        self.state.stage = "sanity_check"
        self._results = Results("validate", self.strategy)
        self._call("on_sanity_check_start")
        with preserved_rng():
            self._run_eval("validate", self._val_loaders, limits, sanity=True)
        self._results = Results("validate", self.strategy)
        self._call("on_sanity_check_end")
        self.state.stage = stage
        self.callback_metrics.clear()
        self.logged_metrics.clear()
        self.progress_bar_metrics.clear()
