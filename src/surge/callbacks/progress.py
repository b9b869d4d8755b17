"""Progress bars: tqdm by default. Metric values are read from the device only when the bar redraws."""
from __future__ import annotations

import sys
import time

from .base import Callback


class ProgressBar(Callback):
    """Base class for progress bars (the Trainer keeps at most one).

    ``total_train_batches``, ``total_val_batches``, ``total_test_batches`` and ``total_predict_batches`` are
    the batches the current (or next) epoch of each stage runs, as a bar would show them (``inf``: a loader
    without a length); ``total_val_batches`` is 0 in a fit epoch that does not validate.
    """

    _trainer = None

    def setup(self, trainer, module, stage: str) -> None:
        self._trainer = trainer

    @property
    def trainer(self):
        if self._trainer is None:
            raise AttributeError(f"{type(self).__name__} is not attached to a Trainer yet (it is, from setup on)")
        return self._trainer

    @property
    def total_train_batches(self):
        trainer = self.trainer
        if trainer.max_epochs == -1 and trainer.max_steps > 0:  # the steps left may end the epoch early
            return min(trainer.num_training_batches, trainer.max_steps - trainer.global_step)
        return trainer.num_training_batches

    @property
    def total_val_batches(self):
        trainer = self.trainer
        if trainer.sanity_checking:
            return sum(trainer.num_sanity_val_batches)
        if trainer.state.fn == "fit" and not (trainer._validates_in_fit
                                              and trainer._validates_on_epoch(trainer.current_epoch)):
            return 0
        return sum(trainer.num_val_batches)

    @property
    def total_test_batches(self):
        return sum(self.trainer.num_test_batches)

    @property
    def total_predict_batches(self):
        return sum(self.trainer.num_predict_batches)

    def get_metrics(self, trainer) -> dict[str, str]:
        """What the bar shows: the metrics logged with ``prog_bar=True``, as short strings."""
        items = {}
        for key, value in trainer.progress_bar_metrics.items():
            v = float(value)
            items[key] = f"{v:.3g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}".rstrip("0").rstrip(".")
        return items


class TQDMProgressBar(ProgressBar):
    """A tqdm bar for training and one for each evaluation; rank 0 only.

    ``refresh_rate``: redraw every n batches; the bar also redraws at most ``max_refresh_per_second``
    times a second so that reading metrics (a device sync on GPU) never slows training down.
    """

    def __init__(self, refresh_rate: int = 1, max_refresh_per_second: float = 4.0, leave: bool = False):
        self.refresh_rate = refresh_rate
        self.min_interval = 1.0 / max_refresh_per_second
        self.leave = leave
        self._bar = None
        self._eval_bar = None
        self._last = 0.0

    @property
    def state_key(self) -> str:
        return "TQDMProgressBar"

    def _enabled(self, trainer) -> bool:
        return self.refresh_rate > 0 and trainer.is_global_zero

    def _new_bar(self, desc, total, position=0, leave=True):
        from tqdm.auto import tqdm

        return tqdm(desc=desc, total=total, position=position, leave=leave, dynamic_ncols=True, file=sys.stderr,
                    smoothing=0, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}")

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self, trainer, module) -> None:
        if not self._enabled(trainer):
            return
        if self._bar is not None:
            self._bar.close()
        total = trainer.num_training_batches
        self._bar = self._new_bar(f"Epoch {trainer.current_epoch}", total if isinstance(total, int) else None)
        self._bar.n = trainer.state.batch_idx  # a resumed epoch starts where it left off
        self._last = 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        bar = self._bar
        if bar is None:
            return
        bar.n = batch_idx + 1
        now = time.monotonic()
        if (batch_idx + 1) % self.refresh_rate == 0 and now - self._last >= self.min_interval:
            self._last = now
            bar.set_postfix(self.get_metrics(trainer), refresh=False)
            bar.refresh()

    def on_train_epoch_end(self, trainer, module) -> None:
        if self._bar is not None:
            self._bar.set_postfix(self.get_metrics(trainer), refresh=False)
            self._bar.refresh()

    def on_train_end(self, trainer, module) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer, module, exception) -> None:
        for bar in (self._bar, self._eval_bar):
            if bar is not None:
                bar.close()
        self._bar = self._eval_bar = None

    # ------------------------------------------------------------------ evaluation
    def _eval_start(self, trainer, desc, totals) -> None:
        if not self._enabled(trainer):
            return
        total = sum(totals) if totals and all(isinstance(t, int) for t in totals) else None
        in_fit = self._bar is not None
        self._eval_bar = self._new_bar(desc, total, position=1 if in_fit else 0, leave=not in_fit and self.leave)

    def _eval_step(self, trainer) -> None:
        if self._eval_bar is not None:
            self._eval_bar.update(1)

    def _eval_end(self) -> None:
        if self._eval_bar is not None:
            self._eval_bar.close()
            self._eval_bar = None

    def on_validation_start(self, trainer, module) -> None:
        totals = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        self._eval_start(trainer, "Sanity check" if trainer.sanity_checking else "Validation", totals)

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_step(trainer)

    def on_validation_end(self, trainer, module) -> None:
        self._eval_end()
        if self._bar is not None:
            self._bar.set_postfix(self.get_metrics(trainer), refresh=True)

    def on_test_start(self, trainer, module) -> None:
        self._eval_start(trainer, "Test", trainer.num_test_batches)

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_step(trainer)

    def on_test_end(self, trainer, module) -> None:
        self._eval_end()

    def on_predict_start(self, trainer, module) -> None:
        self._eval_start(trainer, "Predict", trainer.num_predict_batches)

    def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_step(trainer)

    def on_predict_end(self, trainer, module) -> None:
        self._eval_end()
