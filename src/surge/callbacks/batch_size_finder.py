"""BatchSizeFinder: the largest batch size that fits in memory, searched as a stage starts (:mod:`surge.tuner`)."""
from __future__ import annotations

from typing import Optional

from ..utils import MisconfigurationError
from .base import Callback


class BatchSizeFinder(Callback):
    """As fit (or validate, test, predict) starts, run ``steps_per_trial`` steps at batch size ``init_val``,
    doubling it after each trial that fits in memory, until one runs out of memory, the batch holds the
    whole dataset, ``max_val`` is reached or ``max_trials`` trials were run. ``mode="power"`` keeps the
    last size that fitted; ``"binsearch"`` then searches between it and the first that did not, and takes
    ``margin`` (a fraction) off the result as a safety buffer.

    The size is read from and written to ``batch_arg_name`` on the module, its ``hparams``, the datamodule
    or the datamodule's ``hparams`` (every one that has it), and the stage's dataloaders are requested
    again, so ``*_dataloader()`` must build its loader from that attribute. Weights, optimizer state,
    counters and random state are put back after every trial. ``optimal_batch_size`` holds the result.
    Not for distributed runs (each rank would search on its own).
    """

    SUPPORTED_MODES = ("power", "binsearch")

    def __init__(self, mode: str = "power", steps_per_trial: int = 3, init_val: int = 2, max_trials: int = 25,
                 batch_arg_name: str = "batch_size", margin: float = 0.05, max_val: int = 8192) -> None:
        mode = mode.lower() if isinstance(mode, str) else mode
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"`mode` should be either of {self.SUPPORTED_MODES}, got {mode!r}")
        if not 0.0 <= margin < 1.0:
            raise MisconfigurationError(f"BatchSizeFinder(margin=...) must be in [0, 1), got {margin!r}")
        for name, value in (("steps_per_trial", steps_per_trial), ("init_val", init_val), ("max_trials", max_trials),
                            ("max_val", max_val)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MisconfigurationError(f"BatchSizeFinder({name}=...) must be an int >= 1, got {value!r}")
        self.optimal_batch_size: Optional[int] = init_val
        self._mode, self._steps_per_trial, self._init_val = mode, steps_per_trial, init_val
        self._max_trials, self._batch_arg_name, self._margin, self._max_val = max_trials, batch_arg_name, margin, max_val
        self._early_exit = False  # set by Tuner: end the stage once the search is done

    def setup(self, trainer, pl_module, stage: Optional[str] = None) -> None:
        from ..tuner import has_hparam

        if trainer.world_size > 1 or len(trainer._device_ids) * trainer.num_nodes > 1:
            raise MisconfigurationError("The Batch size finder is not supported with distributed strategies.")
        kind = {"fit": "train", "validate": "val"}.get(stage, stage)
        if trainer._given_loaders.get(kind) is not None:
            raise MisconfigurationError(
                f"The batch size finder cannot be used with dataloaders passed directly to `.{stage}()`: it sets "
                f"`{self._batch_arg_name}` and requests the loaders again. Build them in a `{kind}_dataloader()` "
                f"method of the module or the datamodule instead.")
        if not has_hparam(pl_module, self._batch_arg_name, trainer.datamodule):
            raise MisconfigurationError(
                f"Field {self._batch_arg_name} not found in `model`, `datamodule`, nor their `hparams` attributes.")

    def scale_batch_size(self, trainer, pl_module) -> None:
        from ..tuner import TunerExit, scale_batch_size

        stage = trainer.state.fn.value if trainer.state.fn is not None else "fit"
        self.optimal_batch_size = scale_batch_size(
            trainer, stage, mode=self._mode, steps_per_trial=self._steps_per_trial, init_val=self._init_val,
            max_trials=self._max_trials, batch_arg_name=self._batch_arg_name, margin=self._margin,
            max_val=self._max_val)
        if self._early_exit:
            raise TunerExit()

    def on_fit_start(self, trainer, pl_module) -> None:
        self.scale_batch_size(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "validate":
            return
        self.scale_batch_size(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self.scale_batch_size(trainer, pl_module)

    def on_predict_start(self, trainer, pl_module) -> None:
        self.scale_batch_size(trainer, pl_module)

