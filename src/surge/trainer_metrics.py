"""Where logged values go: callback_metrics, the progress bar, the loggers; part of the Trainer."""
from __future__ import annotations

from typing import Optional

import torch

from .results import Results


class ProgressBarMetrics(dict):
    """``trainer.progress_bar_metrics``: what was logged with ``prog_bar=True``, read as Python floats.

    Training stores the logged tensors as they are and each is turned into a float only when someone
    reads this dict (the progress bar at its redraw, a user): on a GPU ``float()`` waits for the device,
    and doing that every step would stall training for a number nobody may look at.
    """

    __slots__ = ()

    def _as_floats(self) -> None:
        for key, value in dict.items(self):
            if not isinstance(value, float):
                dict.__setitem__(self, key, float(value))

    def __getitem__(self, key):
        value = dict.__getitem__(self, key)
        if not isinstance(value, float):
            value = float(value)
            dict.__setitem__(self, key, value)
        return value

    def get(self, key, default=None):
        return self[key] if key in self else default

    # dict(...) and {**...} copy a dict subclass entry by entry through __getitem__ only when it defines
    # its own __iter__: this one does, so that a copy holds floats too.
    def __iter__(self):
        return dict.__iter__(self)

    def items(self):
        self._as_floats()
        return dict.items(self)

    def values(self):
        self._as_floats()
        return dict.values(self)

    def copy(self) -> dict:
        self._as_floats()
        return dict(dict.items(self))

    def pop(self, key, *default):
        if key in self:
            value = self[key]
            dict.__delitem__(self, key)
            return value
        return dict.pop(self, key, *default)

    def __eq__(self, other):
        self._as_floats()
        return dict.__eq__(self, other)

    __hash__ = None

    def __repr__(self) -> str:
        self._as_floats()
        return dict.__repr__(self)

    def __reduce__(self):
        return (ProgressBarMetrics, (self.copy(),))


class MetricsHandling:
    """Trainer methods that publish what ``self.log`` collected; mixed into :class:`surge.Trainer`.

    Values stay tensors on their device until ``_write_metrics`` hands them to a logger (and the
    progress bar's until someone reads ``progress_bar_metrics``, which gives floats).
    """

    @property
    def progress_bar_metrics(self) -> ProgressBarMetrics:
        """The values logged with ``prog_bar=True``, as Python floats (``{"train_loss": 0.25}``)."""
        return self._progress_bar_metrics

    @progress_bar_metrics.setter
    def progress_bar_metrics(self, metrics: dict) -> None:
        self._progress_bar_metrics = ProgressBarMetrics(metrics)

    def _log_step_metrics(self) -> None:
        """Keep per-step values for the progress bar and callbacks; write them out every n steps."""
        results = self._results
        self._update_step_metrics()
        n = self.log_every_n_steps
        if n and (self.state.batches_seen % n == 0 or self.state.should_stop):
            self._raise_if_nonfinite()
            metrics = results.step_metrics(for_logger=True)
            if metrics:
                self._write_metrics(metrics)
            results.mark_step_written()

    def _update_step_metrics(self, results: Optional[Results] = None) -> None:
        """Put the values logged with on_step=True in this step (training by default, or the evaluation
        ``results``) into ``callback_metrics``, ``logged_metrics`` and the progress bar's, as Lightning
        does after every batch (the loggers get them every ``log_every_n_steps``)."""
        results = results or self._results
        training = results.stage == "train"
        callback, logged, bar = self.callback_metrics, self.logged_metrics, self._progress_bar_metrics
        for m in results.metrics.values():
            if m.fresh and m.on_step:
                key = f"{m.name}_step" if m.on_epoch else m.name
                value = m.step_value
                callback[key] = value
                if training:
                    callback[m.name] = value  # until the epoch value replaces it, at the epoch's end
                if m.logger and training:
                    logged[key] = value
                if m.prog_bar:
                    bar[key] = value

    def _eval_step_metrics(self, results: Results, write: bool) -> None:
        """Values logged with on_step=True in an evaluation step: to callback_metrics, the progress bar
        and (outside the sanity check) the loggers, as training steps do."""
        self._update_step_metrics(results)
        if write:
            metrics = results.step_metrics(for_logger=True)
            if metrics:
                self._write_metrics(metrics)
        results.mark_step_written()

    def _epoch_end(self, stage: str, log: bool = True) -> dict[str, torch.Tensor]:
        """Reduce the epoch metrics into ``callback_metrics`` and the loggers.

        For the training epoch this also runs the ``on_train_epoch_end`` hooks, in the order that lets
        ModelCheckpoint and EarlyStopping see what the module logged in its own epoch-end hook.
        (Validation and test run their epoch-end hooks in ``_run_eval``, before this.)
        """
        if stage == "train":
            self._results.hook = "on_train_epoch_end"
            for cb in self.callbacks:
                if not cb.reads_epoch_metrics:
                    cb.on_train_epoch_end(self, self.module)
            self.module.on_train_epoch_end()
        epoch_values, to_log = {}, {}
        results = self._results
        for key, (value, m) in results.epoch_metrics().items():
            out_key = f"{key}_epoch" if m.on_step else key
            epoch_values[out_key] = value
            self.callback_metrics[out_key] = value
            self.callback_metrics[key] = value
            if m.prog_bar:
                self.progress_bar_metrics[out_key] = value
            if m.logger:
                to_log[out_key] = value
        results.reset_metric_objects()  # their compute() is read: the next epoch starts from zero
        if log and to_log:
            self._write_metrics(to_log)
        if stage == "train":
            for cb in self.callbacks:
                if cb.reads_epoch_metrics:
                    cb.on_train_epoch_end(self, self.module)
        return epoch_values

    def _write_metrics(self, metrics: dict) -> None:
        """Hand metrics to the loggers (rank 0 only): the one place values leave the device."""
        values = {k: float(v) for k, v in metrics.items()}
        self.logged_metrics.update(metrics)
        if not self.is_global_zero or not self.loggers:
            return
        values["epoch"] = self.state.epoch
        for lg in self.loggers:
            self._logger_guard.call(lg, "log_metrics", values, step=self.state.global_step)

    def _log_hyperparams(self) -> None:
        if not self.is_global_zero or not self.loggers:
            return
        params, skipped = self.module._plain_hparams()
        if self.datamodule is not None:
            dm_params, dm_skipped = self.datamodule._plain_hparams()
            params.update(dm_params)
        if params:
            for lg in self.loggers:
                self._logger_guard.call(lg, "log_hyperparams", params)

    # ------------------------------------------------------------------ what the loggers keep
    def _note_checkpoint(self) -> None:
        """A checkpoint of this step is being written. The loggers write out what they buffered now, and
        again once this step's own rows are logged (end of the batch or epoch), so that the history the
        checkpoint covers is on disk as soon as the checkpoint is: a run killed after it loses no row."""
        self._flush_loggers()
        self._flush_due = True

    def _flush_loggers(self) -> None:
        if self.is_global_zero:
            for lg in self.loggers:
                self._logger_guard.call(lg, "save")

    def _continue_logger_history(self) -> None:
        """A resumed fit: each logger keeps the history up to the checkpoint's step and replaces the later
        rows (the killed run may have written some past its checkpoint), so no step appears twice."""
        if self.is_global_zero:
            for lg in self.loggers:
                self._logger_guard.call(lg, "resume_after", self.state.global_step)
