"""``trainer.fit_loop`` as far as Lightning code reaches into it.

surge has no loop objects (its fit loop is methods of the Trainer, :mod:`surge.fit_loop`). What user code does
with Lightning's ``trainer.fit_loop`` is read and change how long fit runs, typically to train on with the same
Trainer::

    trainer.fit(model)                  # max_epochs=5
    trainer.fit_loop.max_epochs = 10    # five more
    trainer.fit(model)

so :class:`FitLoopView` mirrors ``max_epochs``, ``min_epochs``, ``max_steps`` and ``min_steps`` (read and set,
checked as the Trainer's own arguments), ``epoch_loop.max_steps`` / ``min_steps`` / ``global_step``,
``total_batch_idx`` and ``epoch_loop.batch_idx`` (the training batch running now or last, counted over the fit
and in its epoch), and ``epoch_progress.current.completed`` / ``processed`` (epochs done). Anything else of
Lightning's loops is an AttributeError that says so.
"""
from __future__ import annotations

from ..trainer_args import check_run_length


class _Limits:
    """The run-length attributes of the Trainer under Lightning's loop names."""

    _mirrors: tuple = ()

    def __init__(self, trainer) -> None:
        object.__setattr__(self, "_trainer", trainer)

    def __getattr__(self, name: str):
        if name in self._mirrors:
            return getattr(self._trainer, name)
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r} (surge has no Lightning loop objects; "
            f"trainer.fit_loop mirrors max_epochs, min_epochs, max_steps, min_steps, total_batch_idx, epoch_loop "
            f"(with batch_idx and total_batch_idx) and epoch_progress only: set the Trainer's arguments, or use "
            f"callbacks and hooks, for the rest)")

    def __setattr__(self, name: str, value) -> None:
        if name not in self._mirrors:
            raise AttributeError(f"{type(self).__name__}.{name} cannot be set: only {', '.join(self._mirrors)} can")
        setattr(self._trainer, name, check_run_length(name, value, where="trainer.fit_loop."))


class EpochLoopView(_Limits):
    """``trainer.fit_loop.epoch_loop``: ``max_steps``, ``min_steps``, ``global_step``, ``batch_idx`` and
    ``total_batch_idx``."""

    _mirrors = ("max_steps", "min_steps")

    @property
    def global_step(self) -> int:
        return self._trainer.global_step

    @property
    def batch_idx(self) -> int:
        """The index in its epoch of the training batch running now, or of the last one (from the batch's
        start: ``on_train_batch_start`` sees its own index; until the next epoch's first batch starts, and after
        fit, the last batch of the epoch that ended); -1 before the fit's first batch."""
        t = self._trainer
        if t.state.batch_idx or t._batch_open:
            return t.state.batch_idx - 1 + t._batch_open
        return t._batches_of_last_epoch - 1

    @property
    def total_batch_idx(self) -> int:
        """The same over the whole fit, counting every epoch's batches: 0 for the first batch of the fit."""
        t = self._trainer
        return t.state.batches_seen - 1 + t._batch_open


class _Epochs:
    """``epoch_progress.current`` (and ``.total``): the epochs fit completed."""

    def __init__(self, trainer) -> None:
        self._trainer = trainer

    @property
    def completed(self) -> int:
        return self._trainer.current_epoch

    processed = completed


class _EpochProgress:
    def __init__(self, trainer) -> None:
        self.current = self.total = _Epochs(trainer)


class FitLoopView(_Limits):
    """``trainer.fit_loop``: see the module's docstring."""

    _mirrors = ("max_epochs", "min_epochs", "max_steps", "min_steps")

    @property
    def epoch_loop(self) -> EpochLoopView:
        return EpochLoopView(self._trainer)

    @property
    def epoch_progress(self) -> _EpochProgress:
        return _EpochProgress(self._trainer)

    @property
    def total_batch_idx(self) -> int:
        return self.epoch_loop.total_batch_idx

    def __repr__(self) -> str:
        t = self._trainer
        return (f"trainer.fit_loop(max_epochs={t.max_epochs}, min_epochs={t.min_epochs}, max_steps={t.max_steps}, "
                f"min_steps={t.min_steps}, epochs done={t.current_epoch})")
