"""What the Trainer shows of itself: where the run is, its processes, its callbacks (Lightning's read-only
``Trainer`` attributes); mixed into :class:`surge.Trainer`."""
from __future__ import annotations

import math
from typing import Optional, Union

from .module import Module


class TrainerProperties:
    """The Trainer's public read-only properties (``should_stop`` can also be set)."""

    @property
    def current_epoch(self) -> int:
        """The training epoch running now (0-based); after fit, the epochs it ran, counting one that max_steps or
        a stop ended early (as Lightning counts them)."""
        return self.state.epoch + 1 if self._epoch_cut_short else self.state.epoch

    @property
    def global_step(self) -> int:
        return self.state.global_step

    @property
    def should_stop(self) -> bool:
        return self.state.should_stop

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self.state.should_stop = bool(value)

    @property
    def fit_loop(self):
        """Lightning's ``trainer.fit_loop`` as far as user code reaches into it: ``max_epochs``, ``min_epochs``,
        ``max_steps`` and ``min_steps`` to read and set (then ``fit`` again trains on), and the epochs done
        (:mod:`surge.lightning._fit_loop_view`)."""
        from .lightning._fit_loop_view import FitLoopView

        return FitLoopView(self)

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    @property
    def global_rank(self) -> int:
        return self.strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self.strategy.local_rank

    @property
    def node_rank(self) -> int:
        return self.strategy.node_rank

    @property
    def is_global_zero(self) -> bool:
        return self.strategy.is_global_zero

    @property
    def num_devices(self) -> int:
        return len(self._device_ids)

    @property
    def lightning_module(self) -> Optional[Module]:
        return self.module

    @property
    def logger(self):
        return self.loggers[0] if self.loggers else None

    @property
    def log_dir(self) -> str:
        """The first logger's version folder, else ``default_root_dir``."""
        if self.loggers and self.loggers[0].log_dir:
            return self.loggers[0].log_dir
        return self.default_root_dir

    @property
    def sanity_checking(self) -> bool:
        return self.state.stage == "sanity_check"

    @property
    def training(self) -> bool:
        return self.state.stage == "fit" and self.module is not None and self.module.training

    @property
    def validating(self) -> bool:
        return self._results is not None and self._results.stage == "validate"

    @property
    def testing(self) -> bool:
        return self.state.stage == "test"

    @property
    def predicting(self) -> bool:
        return self.state.stage == "predict"

    @property
    def checkpoint_callbacks(self) -> list:
        from .callbacks import ModelCheckpoint

        return [cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint)]

    @property
    def checkpoint_callback(self):
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def early_stopping_callback(self):
        from .callbacks import EarlyStopping

        return next((cb for cb in self.callbacks if isinstance(cb, EarlyStopping)), None)

    @property
    def early_stopping_callbacks(self) -> list:
        """Every EarlyStopping callback, in order."""
        from .callbacks import EarlyStopping

        return [cb for cb in self.callbacks if isinstance(cb, EarlyStopping)]

    @property
    def progress_bar_callback(self):
        from .callbacks import ProgressBar

        return next((cb for cb in self.callbacks if isinstance(cb, ProgressBar)), None)

    @property
    def ckpt_path(self) -> Optional[str]:
        """The checkpoint the current run loaded, if any."""
        return self._ckpt_path

    @property
    def estimated_stepping_batches(self) -> Union[int, float]:
        """Optimizer steps fit will take (for schedulers such as OneCycleLR); ``inf`` if unbounded."""
        self._ensure_train_data()  # read inside configure_optimizers: the train loaders are requested now
        by_steps = self.max_steps if self.max_steps != -1 else math.inf
        max_epochs = self.max_epochs if self.max_epochs is not None else (1000 if self.max_steps == -1 else -1)
        if max_epochs == -1 or not isinstance(self.num_training_batches, int):
            return by_steps
        per_epoch = math.ceil(self.num_training_batches / self.accumulate_grad_batches)
        return min(by_steps, per_epoch * max_epochs)  # whichever ends fit first
