"""What both searches of the tuner share: the module's hyperparameter lookup (``model.lr``, ``hparams.lr``, the
datamodule's), the snapshot that puts a run back as it was, and trial runs inside the Trainer's own loop."""
from __future__ import annotations

import contextlib
import copy
from typing import Any

from ..utils import MisconfigurationError

class TunerExit(Exception):
    """Raised by a finder run from :class:`Tuner` once its search is done: the Trainer ends the stage there
    (teardown runs, nothing else), as a successful run."""


# ---------------------------------------------------------------------------- where an attribute lives
def _holders(module, datamodule=None) -> list:
    """Where a hyperparameter such as ``lr`` or ``batch_size`` may live, in the order it is looked up."""
    found = [module, getattr(module, "hparams", None)]
    dm = datamodule if datamodule is not None else getattr(getattr(module, "_trainer", None), "datamodule", None)
    if dm is not None:
        found += [dm, getattr(dm, "hparams", None)]
    return [h for h in found if h is not None]


def _holds(holder, name: str) -> bool:
    if isinstance(holder, dict):  # hparams
        return name in holder
    return hasattr(holder, name)


def has_hparam(module, name: str, datamodule=None) -> bool:
    """Whether ``name`` is an attribute of the module, its ``hparams``, the datamodule or its ``hparams``."""
    return any(_holds(h, name) for h in _holders(module, datamodule))


def get_hparam(module, name: str, datamodule=None) -> Any:
    """The first of module, ``module.hparams``, datamodule, ``datamodule.hparams`` that holds ``name``."""
    for h in _holders(module, datamodule):
        if _holds(h, name):
            return h[name] if isinstance(h, dict) else getattr(h, name)
    raise AttributeError(f"{name!r} is neither an attribute of {type(module).__name__}, nor in its hparams, nor in "
                         f"the datamodule or its hparams")


def set_hparam(module, name: str, value, datamodule=None) -> None:
    """Set ``name`` to ``value`` everywhere :func:`get_hparam` could read it from (the module's ``hparams``
    and the datamodule's too: ``train_dataloader()`` may read either)."""
    holders = [h for h in _holders(module, datamodule) if _holds(h, name)]
    if not holders:
        raise AttributeError(f"{name!r} is neither an attribute of {type(module).__name__}, nor in its hparams, nor "
                             f"in the datamodule or its hparams")
    for h in holders:
        if isinstance(h, dict):
            h[name] = value
        else:
            setattr(h, name, value)


# ---------------------------------------------------------------------------- saving and putting back a run
class _Snapshot:
    """Everything a trial changes, kept in memory: the weights, the optimizers, schedulers and gradient
    scaler, the counters, the random state and the metrics."""

    def __init__(self, trainer) -> None:
        from ..seed import capture_rng_state

        s = trainer.strategy
        self.weights = copy.deepcopy(s.module_state_dict())
        self.optimizers = [copy.deepcopy(s.optimizer_state_dict(o)) for o in trainer.optimizers]
        self.schedulers = [copy.deepcopy(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs]
        self.precision = copy.deepcopy(s.precision.state_dict())
        self.state = trainer.state.state_dict()
        self.epoch_finished, self.cut_short = trainer._epoch_finished, trainer._epoch_cut_short
        self.metrics = [dict(m) for m in (trainer.callback_metrics, trainer.logged_metrics, trainer.progress_bar_metrics)]
        self.rng = capture_rng_state()
        self.training = trainer.module.training

    def restore(self, trainer) -> None:
        from ..seed import restore_rng_state

        s = trainer.strategy
        s.load_module_state_dict(self.weights, strict=True)
        for opt, st in zip(trainer.optimizers, self.optimizers):
            s.load_optimizer_state_dict(opt, st)
            opt.zero_grad(set_to_none=True)
        for config, st in zip(trainer.lr_scheduler_configs, self.schedulers):
            config.scheduler.load_state_dict(st)
        s.precision.load_state_dict(self.precision)
        stage = trainer.state.stage
        trainer.state.load_state_dict(self.state)
        trainer.state.stage = stage
        trainer.state.should_stop = False
        trainer._epoch_finished, trainer._epoch_cut_short = self.epoch_finished, self.cut_short
        trainer._grads_pending.clear()
        for live, kept in zip((trainer.callback_metrics, trainer.logged_metrics, trainer.progress_bar_metrics),
                              self.metrics):
            live.clear()
            live.update(kept)
        restore_rng_state(self.rng)
        trainer.module.train(self.training)


@contextlib.contextmanager
def _trial(trainer, callbacks=(), **settings):
    """Run the block with these Trainer attributes, only ``callbacks`` (no progress bar, no checkpoints) and
    no loggers; put all of them back afterwards, whatever happens inside."""
    settings = {"min_epochs": None, "min_steps": None, **settings}  # a stop (divergence) is never held back
    saved = {name: getattr(trainer, name) for name in settings}
    kept_callbacks, kept_loggers, kept_results = trainer.callbacks, trainer.loggers, trainer._results
    try:
        for name, value in settings.items():
            setattr(trainer, name, value)
        trainer.callbacks, trainer.loggers = list(callbacks), []
        trainer._hooks.clear()  # who listens to which hook is looked up again for the trial's callbacks
        yield
    finally:
        for name, value in saved.items():
            setattr(trainer, name, value)
        trainer.callbacks, trainer.loggers, trainer._results = kept_callbacks, kept_loggers, kept_results
        trainer._hooks.clear()


def _train_steps(trainer, steps: int) -> None:
    """Train ``steps`` more optimizer steps with the fit loop itself (epochs roll over as the data ends)."""
    from ..results import Results

    trainer.train_dataloader is not None or trainer._setup_train_data()
    if trainer.num_training_batches == 0:
        raise MisconfigurationError("the tuner needs training batches, and the train dataloader has none")
    trainer.max_steps = trainer.global_step + steps
    trainer._results = Results("train", trainer.strategy)
    trainer._run_epochs()
