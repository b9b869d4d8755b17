"""LearningRateFinder: a learning-rate range test at the start of fit (the algorithm is :mod:`surge.tuner`)."""
from __future__ import annotations

from typing import Optional

from ..utils import MisconfigurationError
from .base import Callback


class LearningRateFinder(Callback):
    """At ``on_fit_start``, train ``num_training_steps`` steps while the learning rate rises from ``min_lr``
    to ``max_lr`` (``mode`` "exponential" or "linear"), stopping early once the smoothed loss exceeds
    ``early_stop_threshold`` times its best (``None``: never). The weights, optimizer state, counters and
    random state are then put back, so fit trains from where it started. With ``update_attr`` the
    suggestion (:meth:`surge.tuner.LRFinder.suggestion`) is written to the module's ``lr`` /
    ``learning_rate`` (or ``attr_name``), in the module or its ``hparams``, and the optimizers are built
    again from ``configure_optimizers`` so that fit trains at it.

    ``optimal_lr`` holds the :class:`surge.tuner.LRFinder` (``results``, ``suggestion()``, ``plot()``).
    Override ``on_fit_start`` to run it elsewhere, e.g. at chosen epochs from ``on_train_epoch_start``
    by calling :meth:`lr_find`.
    """

    SUPPORTED_MODES = ("linear", "exponential")

    def __init__(self, min_lr: float = 1e-8, max_lr: float = 1, num_training_steps: int = 100,
                 mode: str = "exponential", early_stop_threshold: Optional[float] = 4.0, update_attr: bool = True,
                 attr_name: str = "", weights_only: Optional[bool] = None) -> None:
        mode = mode.lower() if isinstance(mode, str) else mode
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"`mode` should be either of {self.SUPPORTED_MODES}, got {mode!r}")
        if early_stop_threshold is not None and not early_stop_threshold > 0:
            raise MisconfigurationError(f"LearningRateFinder(early_stop_threshold=...) must be > 0 or None, got "
                                        f"{early_stop_threshold!r}")
        self._min_lr, self._max_lr, self._num_training_steps = min_lr, max_lr, num_training_steps
        self._mode, self._early_stop_threshold = mode, early_stop_threshold
        self._update_attr, self._attr_name = update_attr, attr_name
        self._weights_only = weights_only  # Lightning's argument; the run is kept in memory, not in a file
        self._early_exit = False  # set by Tuner: end fit once the test is done
        self.optimal_lr = None

    def lr_find(self, trainer, pl_module) -> None:
        from ..tuner import TunerExit, lr_find

        self.optimal_lr = lr_find(trainer, pl_module, min_lr=self._min_lr, max_lr=self._max_lr,
                                  num_training=self._num_training_steps, mode=self._mode,
                                  early_stop_threshold=self._early_stop_threshold, update_attr=self._update_attr,
                                  attr_name=self._attr_name)
        if self._early_exit:
            raise TunerExit()

    def on_fit_start(self, trainer, pl_module) -> None:
        self.lr_find(trainer, pl_module)
