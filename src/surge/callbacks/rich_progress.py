"""RichProgressBar: the progress bar drawn with ``rich`` (pip install rich)."""
from __future__ import annotations

import time
from typing import Any, Optional

from .progress import ProgressBar


def _rich():
    try:
        import rich.progress
    except ImportError as err:
        raise ImportError("RichProgressBar needs rich: pip install rich (or pip install 'surge[rich]'); "
                          "the default TQDMProgressBar works without it") from err
    return rich.progress


class RichProgressBar(ProgressBar):
    """A rich progress display: one task for the training epoch, one per evaluation; rank 0 only.

    Shows the metrics logged with ``prog_bar=True`` after the bar; redraws every ``refresh_rate``
    batches and at most ``max_refresh_per_second`` times a second (reading a metric syncs a GPU).
    A resumed epoch starts at the batch it resumed from.

    Args:
        refresh_rate: update every n batches (0 hides the bar).
        max_refresh_per_second: upper bound on redraws.
        leave: keep finished evaluation bars on screen outside fit.
        console: a ``rich.console.Console`` to draw on (default: stderr).

    Example::

        surge.Trainer(callbacks=[RichProgressBar()])
    """

    def __init__(self, refresh_rate: int = 1, max_refresh_per_second: float = 4.0, leave: bool = False,
                 console: Any = None) -> None:
        self._rp = _rich()  # fail here, when the Trainer is built, not in the middle of a run
        self.refresh_rate = refresh_rate
        self.min_interval = 1.0 / max_refresh_per_second
        self.leave = leave
        self.console = console
        self._progress = None
        self._train_task: Optional[int] = None
        self._eval_task: Optional[int] = None
        self._last = 0.0

    @property
    def state_key(self) -> str:
        return "RichProgressBar"

    def _enabled(self, trainer) -> bool:
        return self.refresh_rate > 0 and trainer.is_global_zero

    def _ensure_progress(self):
        if self._progress is None:
            rp = self._rp
            if self.console is None:
                from rich.console import Console

                self.console = Console(stderr=True)
            self._progress = rp.Progress(
                rp.TextColumn("[progress.description]{task.description}"), rp.BarColumn(),
                rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), rp.TimeRemainingColumn(),
                rp.TextColumn("{task.fields[metrics]}"), console=self.console, auto_refresh=False)
            self._progress.start()
        return self._progress

    def _metrics_text(self, trainer) -> str:
        return " ".join(f"{k}: {v}" for k, v in self.get_metrics(trainer).items())

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.refresh()
            self._progress.stop()
        self._progress = None
        self._train_task = self._eval_task = None

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self, trainer, module) -> None:
        if not self._enabled(trainer):
            return
        progress = self._ensure_progress()
        if self._train_task is not None:
            progress.remove_task(self._train_task)
        total = trainer.num_training_batches
        self._train_task = progress.add_task(f"Epoch {trainer.current_epoch}", total=total if isinstance(total, int) else None,
                                             completed=trainer.state.batch_idx, metrics="")
        progress.refresh()
        self._last = 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self._train_task is None:
            return
        progress = self._progress
        progress.update(self._train_task, completed=batch_idx + 1)
        now = time.monotonic()
        if (batch_idx + 1) % self.refresh_rate == 0 and now - self._last >= self.min_interval:
            self._last = now
            progress.update(self._train_task, metrics=self._metrics_text(trainer))
            progress.refresh()

    def on_train_epoch_end(self, trainer, module) -> None:
        if self._train_task is not None:
            self._progress.update(self._train_task, metrics=self._metrics_text(trainer))
            self._progress.refresh()

    def on_train_end(self, trainer, module) -> None:
        self._stop()

    def on_exception(self, trainer, module, exception) -> None:
        self._stop()

    # ------------------------------------------------------------------ evaluation
    def _eval_start(self, trainer, desc, totals) -> None:
        if not self._enabled(trainer):
            return
        total = sum(totals) if totals and all(isinstance(t, int) for t in totals) else None
        progress = self._ensure_progress()
        self._eval_task = progress.add_task(desc, total=total, metrics="")

    def _eval_step(self) -> None:
        if self._eval_task is not None:
            self._progress.update(self._eval_task, advance=1)
            now = time.monotonic()
            if now - self._last >= self.min_interval:
                self._last = now
                self._progress.refresh()

    def _eval_end(self, trainer) -> None:
        if self._eval_task is None:
            return
        in_fit = self._train_task is not None
        if in_fit or not self.leave:
            self._progress.remove_task(self._eval_task)
        self._eval_task = None
        if in_fit:
            self._progress.update(self._train_task, metrics=self._metrics_text(trainer))
            self._progress.refresh()
        else:
            self._stop()

    def on_validation_start(self, trainer, module) -> None:
        totals = trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches
        self._eval_start(trainer, "Sanity check" if trainer.sanity_checking else "Validation", totals)

    def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_step()

    def on_validation_end(self, trainer, module) -> None:
        self._eval_end(trainer)

    def on_test_start(self, trainer, module) -> None:
        self._eval_start(trainer, "Test", trainer.num_test_batches)

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_step()

    def on_test_end(self, trainer, module) -> None:
        self._eval_end(trainer)

    def on_predict_start(self, trainer, module) -> None:
        self._eval_start(trainer, "Predict", trainer.num_predict_batches)

    def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_step()

    def on_predict_end(self, trainer, module) -> None:
        self._eval_end(trainer)
