"""The tuner: a learning-rate range test and a search for the largest batch size that fits in memory.

Both run inside a real ``fit`` (or ``validate`` / ``test`` / ``predict``) of the Trainer, so that every
strategy, precision and hook the run uses is the one measured:

- :class:`surge.callbacks.LearningRateFinder` / :meth:`Tuner.lr_find`: at ``on_fit_start`` train
  ``num_training`` steps while the learning rate rises from ``min_lr`` to ``max_lr``, record the smoothed
  loss at each, put the weights, optimizer and random state back, and suggest the rate where the loss
  falls fastest.
- :class:`surge.callbacks.BatchSizeFinder` / :meth:`Tuner.scale_batch_size`: run a few steps with a
  batch size, double it until a step runs out of memory (``"power"``), then optionally search between
  the last size that fitted and the first that did not (``"binsearch"``).

The Tuner's methods run the stage with the finder as the first callback and end the stage right after
the search; the callbacks, given to ``Trainer(callbacks=...)``, search and then let the stage go on.
docs/tuner.md.
"""
from __future__ import annotations

import contextlib
from typing import Optional

from ..utils import MisconfigurationError
from .batch_size import is_oom_error, scale_batch_size
from .lr_find import LRFinder, lr_find
from .trials import TunerExit, get_hparam, has_hparam, set_hparam

__all__ = ["Tuner", "TunerExit", "LRFinder", "lr_find", "scale_batch_size", "is_oom_error", "has_hparam",
           "get_hparam", "set_hparam"]

_METHODS = ("fit", "validate", "test", "predict")


# ---------------------------------------------------------------------------- the Tuner
class Tuner:
    """Tune a Trainer's run before training it::

        tuner = Tuner(trainer)
        lr_finder = tuner.lr_find(model)            # model.lr is set to the suggestion
        fig = lr_finder.plot(suggest=True)
        tuner.scale_batch_size(model, mode="power")  # model.batch_size is set to what fits
        trainer.fit(model)
    """

    def __init__(self, trainer) -> None:
        self._trainer = trainer

    def lr_find(self, model, train_dataloaders=None, val_dataloaders=None, dataloaders=None, datamodule=None,
                method: str = "fit", min_lr: float = 1e-8, max_lr: float = 1, num_training: int = 100,
                mode: str = "exponential", early_stop_threshold: Optional[float] = 4.0, update_attr: bool = True,
                attr_name: str = "", weights_only: Optional[bool] = None) -> Optional[LRFinder]:
        """Run a learning-rate range test as a fit of ``model`` (arguments as :class:`LearningRateFinder`'s);
        return the :class:`LRFinder`, or None under ``fast_dev_run``. ``weights_only`` is accepted for
        Lightning's signature: the run is kept in memory, not in a file."""
        if method != "fit":
            raise MisconfigurationError("method='fit' is the only valid configuration to run lr finder.")
        _check_arguments(train_dataloaders, val_dataloaders, dataloaders, method)
        from ..callbacks.lr_finder import LearningRateFinder

        if any(isinstance(cb, LearningRateFinder) for cb in self._trainer.callbacks):
            raise ValueError("Trainer is already configured with a `LearningRateFinder` callback. Please remove it "
                             "if you want to use the Tuner.")
        finder = LearningRateFinder(min_lr=min_lr, max_lr=max_lr, num_training_steps=num_training, mode=mode,
                                    early_stop_threshold=early_stop_threshold, update_attr=update_attr,
                                    attr_name=attr_name)
        with self._first_callback(finder):
            self._trainer.fit(model, train_dataloaders, val_dataloaders, datamodule)
        return finder.optimal_lr

    def scale_batch_size(self, model, train_dataloaders=None, val_dataloaders=None, dataloaders=None,
                         datamodule=None, method: str = "fit", mode: str = "power", steps_per_trial: int = 3,
                         init_val: int = 2, max_trials: int = 25, batch_arg_name: str = "batch_size",
                         margin: float = 0.05, max_val: int = 8192) -> Optional[int]:
        """Find the largest batch size that fits, by running ``method`` (arguments as :class:`BatchSizeFinder`'s);
        return it (also set on the module or datamodule), or None under ``fast_dev_run``."""
        _check_arguments(train_dataloaders, val_dataloaders, dataloaders, method)
        if not 0.0 <= margin < 1.0:
            raise MisconfigurationError(f"scale_batch_size(margin=...) must be in [0, 1), got {margin!r}")
        from ..callbacks.batch_size_finder import BatchSizeFinder

        trainer = self._trainer
        if trainer.world_size > 1 or len(trainer._device_ids) * trainer.num_nodes > 1:
            raise ValueError("Tuning the batch size is currently not supported with distributed strategies.")
        if any(isinstance(cb, BatchSizeFinder) for cb in trainer.callbacks):
            raise ValueError("Trainer is already configured with a `BatchSizeFinder` callback. Please remove it if "
                             "you want to use the Tuner.")
        finder = BatchSizeFinder(mode=mode, steps_per_trial=steps_per_trial, init_val=init_val, max_trials=max_trials,
                                 batch_arg_name=batch_arg_name, margin=margin, max_val=max_val)
        with self._first_callback(finder):
            if method == "fit":
                trainer.fit(model, train_dataloaders, val_dataloaders, datamodule)
            else:
                getattr(trainer, method)(model, dataloaders, datamodule=datamodule)
        return finder.optimal_batch_size

    @contextlib.contextmanager
    def _first_callback(self, finder):
        """The finder goes first and ends the stage once it has searched; it is gone again afterwards."""
        trainer = self._trainer
        finder._early_exit = True
        trainer.callbacks = [finder] + list(trainer.callbacks)
        try:
            yield
        finally:
            trainer.callbacks = [cb for cb in trainer.callbacks if cb is not finder]


def _check_arguments(train_dataloaders, val_dataloaders, dataloaders, method: str) -> None:
    if method not in _METHODS:
        raise ValueError(f"method {method!r} is invalid. Should be one of {_METHODS}.")
    if method == "fit" and dataloaders is not None:
        raise MisconfigurationError(f"In tuner with method={method!r}, `dataloaders` argument should be None, "
                                         f"please consider setting `train_dataloaders` and `val_dataloaders` instead.")
    if method != "fit" and (train_dataloaders is not None or val_dataloaders is not None):
        raise MisconfigurationError(f"In tuner with `method`={method!r}, `train_dataloaders` and "
                                         f"`val_dataloaders` arguments should be None, please consider setting "
                                         f"`dataloaders` instead.")
