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
import copy
import gc
import logging
import math
from typing import Any, Optional

import torch

from .utils import MisconfigurationError, rank_zero_info, rank_zero_warn

log = logging.getLogger(__name__)

_METHODS = ("fit", "validate", "test", "predict")


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
        from .seed import capture_rng_state

        s = trainer.strategy
        self.weights = copy.deepcopy(s.module_state_dict())
        self.optimizers = [copy.deepcopy(s.optimizer_state_dict(o)) for o in trainer.optimizers]
        self.schedulers = [copy.deepcopy(c.scheduler.state_dict()) for c in trainer.lr_scheduler_configs]
        self.precision = copy.deepcopy(s.precision.state_dict())
        self.state = trainer.state.state_dict()
        self.epoch_finished = trainer._epoch_finished
        self.metrics = [dict(m) for m in (trainer.callback_metrics, trainer.logged_metrics, trainer.progress_bar_metrics)]
        self.rng = capture_rng_state()
        self.training = trainer.module.training

    def restore(self, trainer) -> None:
        from .seed import restore_rng_state

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
        trainer._epoch_finished = self.epoch_finished
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
    from .results import Results

    trainer.train_dataloader is not None or trainer._setup_train_data()
    if trainer.num_training_batches == 0:
        raise MisconfigurationError("the tuner needs training batches, and the train dataloader has none")
    trainer.max_steps = trainer.global_step + steps
    trainer._results = Results("train", trainer.strategy)
    trainer._run_epochs()


# ---------------------------------------------------------------------------- the learning-rate range test
class LRFinder:
    """What a learning-rate range test found: ``results["lr"]`` and ``results["loss"]`` (the loss smoothed
    with an exponential moving average, one entry per optimizer step), :meth:`suggestion` and :meth:`plot`."""

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        if mode not in ("linear", "exponential"):
            raise MisconfigurationError(f"lr_find(mode={mode!r}) is not supported; choose 'exponential' or 'linear'")
        self.mode, self.lr_min, self.lr_max, self.num_training = mode, lr_min, lr_max, num_training
        self.results: dict[str, list] = {"lr": [], "loss": []}
        self._optimal_idx: Optional[int] = None

    def lr_at(self, k: int) -> float:
        """The learning rate of step ``k`` (0-based) of the test: ``lr_min`` at the first, ``lr_max`` at the last."""
        frac = k / max(self.num_training - 1, 1)
        if self.mode == "linear":
            return self.lr_min + frac * (self.lr_max - self.lr_min)
        return self.lr_min * (self.lr_max / self.lr_min) ** frac

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> Optional[float]:
        """The learning rate where the smoothed loss falls fastest (its most negative slope against the
        learning rate, or against its logarithm for an exponential test, as the plot's axis), leaving out the first ``skip_begin`` and last ``skip_end`` points and any that are
        not finite; ``None`` (logged) when fewer than two points are left."""
        lrs, losses = self.results["lr"], self.results["loss"]
        end = len(losses) - skip_end if skip_end > 0 else len(losses)
        idx = [i for i in range(skip_begin, end) if math.isfinite(losses[i])]
        if len(idx) < 2:
            log.error("lr_find: cannot suggest a learning rate from fewer than 2 points; raise num_training or give "
                      "the search more batches")
            self._optimal_idx = None
            return None
        x = torch.tensor([lrs[i] for i in idx], dtype=torch.float64)
        if self.mode == "exponential":  # the slope as the plot shows it: against log(lr), where the points are even
            x = x.log()
        y = torch.tensor([losses[i] for i in idx], dtype=torch.float64)
        slopes = torch.gradient(y, spacing=(x,))[0]
        self._optimal_idx = idx[int(torch.argmin(slopes))]
        return lrs[self._optimal_idx]

    def plot(self, suggest: bool = False, show: bool = False, ax=None):
        """The loss against the learning rate (log scale for an exponential test), with the suggestion as a red
        dot when ``suggest``; returns the matplotlib figure (needs matplotlib)."""
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise MisconfigurationError("LRFinder.plot needs matplotlib: pip install matplotlib") from None
        fig = ax.figure if ax is not None else None
        if ax is None:
            fig, ax = plt.subplots()
        ax.plot(self.results["lr"], self.results["loss"])
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if suggest and self.suggestion() is not None:
            i = self._optimal_idx
            ax.plot(self.results["lr"][i], self.results["loss"][i], marker="o", markersize=10, color="red")
        if show:
            plt.show()
        return fig

    def __repr__(self) -> str:
        return (f"LRFinder(mode={self.mode!r}, lr_min={self.lr_min}, lr_max={self.lr_max}, "
                f"steps={len(self.results['lr'])}/{self.num_training})")


class _RangeTest:
    """The trial's only callback: sets each step's learning rate, records the smoothed loss, stops on divergence."""

    def __init__(self, finder: LRFinder, early_stop_threshold: Optional[float], beta: float = 0.98) -> None:
        from .callbacks.base import Callback

        self.finder, self.threshold, self.beta = finder, early_stop_threshold, beta
        self.avg = 0.0
        self.best = math.inf
        self.start_step: Optional[int] = None
        self.pending_lr: Optional[float] = None
        # A Callback subclass made here, so that the Trainer sees which hooks it overrides.
        self.callback = type("LRRangeTest", (Callback,), {
            "on_train_batch_start": lambda _cb, trainer, module, batch, batch_idx: self.before(trainer),
            "on_train_batch_end": lambda _cb, trainer, module, outputs, batch, batch_idx: self.after(trainer, outputs),
        })()

    def before(self, trainer) -> None:
        if self.start_step is None:
            self.start_step = trainer.global_step
        lr = self.finder.lr_at(trainer.global_step - self.start_step)
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        self.pending_lr = lr

    def after(self, trainer, outputs) -> None:
        k = trainer.global_step - self.start_step  # optimizer steps taken by the test so far
        if k <= len(self.finder.results["lr"]):  # inside an accumulation window: no step yet
            return
        loss = outputs if isinstance(outputs, torch.Tensor) else outputs.get("loss") if isinstance(outputs, dict) else None
        if loss is None:
            value = float("nan")  # training_step returned nothing to read: a gap in the curve
        else:
            value = loss.detach().float().reshape(()).clone()
            if trainer.world_size > 1:  # every rank sees the same curve, so all stop together
                value = trainer.strategy.reduce(value.to(trainer.strategy.root_device), "mean")
            value = float(value)
        self.finder.results["lr"].append(self.pending_lr)
        if not math.isfinite(value):
            self.finder.results["loss"].append(value)
            if loss is not None and self.threshold is not None:
                trainer.should_stop = True  # a loss of inf or nan: the rate is far too high
            return
        self.avg = self.beta * self.avg + (1 - self.beta) * value
        smoothed = self.avg / (1 - self.beta ** k)
        self.finder.results["loss"].append(smoothed)
        if self.threshold is not None and k > 1 and smoothed > self.threshold * self.best:
            trainer.should_stop = True  # diverging: the rest of the range would only be worse
        self.best = min(self.best, smoothed)


def _lr_attr(module, attr_name: str) -> str:
    if attr_name:
        if not has_hparam(module, attr_name):
            raise AttributeError(f"lr_find(attr_name={attr_name!r}): {type(module).__name__} has no attribute "
                                 f"{attr_name!r}, and neither has its hparams")
        return attr_name
    for name in ("lr", "learning_rate"):
        if has_hparam(module, name):
            return name
    raise AttributeError(f"lr_find(update_attr=True) looks for the learning rate in `{type(module).__name__}.lr` or "
                         f"`.learning_rate` (or in its hparams), and found neither; name it with "
                         f"lr_find(attr_name=...) or pass update_attr=False")


def lr_find(trainer, module, min_lr: float = 1e-8, max_lr: float = 1.0, num_training: int = 100,
            mode: str = "exponential", early_stop_threshold: Optional[float] = 4.0, update_attr: bool = True,
            attr_name: str = "") -> Optional[LRFinder]:
    """Run the range test inside the fit that is starting (called at ``on_fit_start``); see the module docstring."""
    if trainer.fast_dev_run:
        rank_zero_warn("Skipping learning rate finder since `fast_dev_run` is enabled.")
        return None
    if not (isinstance(min_lr, (int, float)) and isinstance(max_lr, (int, float)) and 0 < min_lr < max_lr):
        raise MisconfigurationError(f"lr_find needs 0 < min_lr < max_lr, got min_lr={min_lr!r}, max_lr={max_lr!r}")
    if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 1:
        raise MisconfigurationError(f"lr_find(num_training=...) must be an int >= 1, got {num_training!r}")
    if update_attr:
        attr_name = _lr_attr(module, attr_name)
    if len(trainer.optimizers) != 1:
        raise MisconfigurationError(f"`model.configure_optimizers()` returned {len(trainer.optimizers)} optimizers, "
                                    f"but the learning rate finder works with exactly one")
    finder = LRFinder(mode, float(min_lr), float(max_lr), num_training)
    test = _RangeTest(finder, early_stop_threshold)
    snapshot = _Snapshot(trainer)
    try:
        with _trial(trainer, [test.callback], max_epochs=-1, max_steps=trainer.max_steps, _val_source=False):
            _train_steps(trainer, num_training)
    finally:
        snapshot.restore(trainer)
    if len(finder.results["lr"]) < num_training:
        rank_zero_info(f"surge: lr_find stopped after {len(finder.results['lr'])} of {num_training} steps: the loss "
                       f"diverged")
    if update_attr:
        lr = finder.suggestion()
        if lr is not None:
            set_hparam(module, attr_name, lr)
            _rebuild_optimizers(trainer, lr)
            rank_zero_info(f"surge: learning rate set to {lr:.3g} (lr_find's suggestion, in {type(module).__name__}."
                           f"{attr_name})")
    return finder


def _rebuild_optimizers(trainer, lr: float) -> None:
    """Train on at the new rate: build the optimizers and schedulers again from ``configure_optimizers`` (which
    reads the new attribute); a fit resumed from a checkpoint keeps its optimizer state and only changes the rate."""
    if trainer._ckpt_path is None:
        trainer._configure_optimizers()
        trainer._speed.setup_optimizers(trainer)
        return
    for opt in trainer.optimizers:
        for group in opt.param_groups:
            group["lr"] = lr


# ---------------------------------------------------------------------------- the batch-size search
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "CUDNN_STATUS_NOT_SUPPORTED", "cuDNN error: CUDNN_STATUS_ALLOC")


def is_oom_error(err: BaseException) -> bool:
    """Whether ``err`` says that memory ran out (CUDA, cuDNN or the CPU allocator)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and len(err.args) == 1 and isinstance(err.args[0], str) and any(
        m in err.args[0] for m in _OOM_MESSAGES)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _loader_kind(stage: str) -> str:
    return {"fit": "train", "validate": "val", "test": "test", "predict": "predict"}[stage]


def _dataset_length(trainer, stage: str) -> Optional[int]:
    """Samples in the stage's data (the largest of several loaders), None for iterable-style data."""
    from .trainer_data import CombinedBatches

    loaders = [trainer.train_dataloader] if stage == "fit" else getattr(trainer, f"_{_loader_kind(stage)}_loaders") or []
    flat = []
    for ld in loaders:
        flat += ld.combined.flattened if isinstance(ld, CombinedBatches) else [ld]
    sizes = []
    for ld in flat:
        try:
            sizes.append(len(ld.dataset))
        except (AttributeError, TypeError):
            return None
    return max(sizes) if sizes else None


class _BatchTrials:
    """Runs one trial per batch size for :func:`scale_batch_size` on the stage that is starting."""

    def __init__(self, trainer, stage: str, steps: int, batch_arg_name: str) -> None:
        self.trainer, self.stage, self.steps, self.name = trainer, stage, steps, batch_arg_name

    def size(self) -> int:
        return get_hparam(self.trainer.module, self.name, self.trainer.datamodule)

    def set_size(self, value: int) -> None:
        set_hparam(self.trainer.module, self.name, value, self.trainer.datamodule)
        self.reload()

    def reload(self) -> None:
        """Forget the stage's loaders, so that they are requested again with the new size."""
        t = self.trainer
        if self.stage == "fit":
            t.train_dataloader = None
            t._val_loaders, t._val_shown = None, None
        else:
            setattr(t, f"_{_loader_kind(self.stage)}_loaders", None)

    def fits(self) -> bool:
        """Run ``steps`` steps at the current size: True if they ran, False if memory ran out."""
        t, snapshot = self.trainer, _Snapshot(self.trainer)
        _free_memory()
        try:
            if self.stage == "fit":
                with _trial(t, (), max_epochs=-1, max_steps=t.max_steps, limit_train_batches=1.0, _val_source=False):
                    _train_steps(t, self.steps)
            else:
                kind = _loader_kind(self.stage)
                settings = {f"limit_{kind}_batches": self.steps, "_verbose": False}
                if self.stage == "predict":
                    settings["_return_predictions"] = False
                with _trial(t, (), **settings):
                    if self.stage == "predict":
                        t._predict_loop()
                    else:
                        t._evaluate_stage(self.stage)
            return True
        except RuntimeError as err:
            if not is_oom_error(err):
                raise
            del err
            return False
        finally:
            snapshot.restore(t)
            _free_memory()

    def length(self) -> Optional[int]:
        """The data's length, with the loaders requested at the current size if they are not yet."""
        t = self.trainer
        if self.stage == "fit":
            t.train_dataloader is not None or t._setup_train_data()
        elif getattr(t, f"_{_loader_kind(self.stage)}_loaders") is None:
            t._loaders(_loader_kind(self.stage))
        return _dataset_length(t, self.stage)


def scale_batch_size(trainer, stage: str = "fit", mode: str = "power", steps_per_trial: int = 3, init_val: int = 2,
                     max_trials: int = 25, batch_arg_name: str = "batch_size", margin: float = 0.05,
                     max_val: int = 8192) -> Optional[int]:
    """Search the largest batch size that runs ``steps_per_trial`` steps of ``stage`` without running out of
    memory; set it on the module (or datamodule) and return it. See the module docstring."""
    if trainer.fast_dev_run:
        rank_zero_warn("Skipping batch size scaler since `fast_dev_run` is enabled.")
        return None
    if not 0.0 <= margin < 1.0:
        raise MisconfigurationError(f"scale_batch_size(margin=...) must be in [0, 1), got {margin!r}")
    trials = _BatchTrials(trainer, stage, steps_per_trial, batch_arg_name)
    size = min(init_val, max_val)
    trials.set_size(size)
    good, bad = None, None  # the largest size that ran, the smallest that did not
    for _ in range(max_trials):
        length = trials.length()
        if trials.fits():
            good = size
            if bad is None:  # still growing
                if length is not None and size >= length:
                    rank_zero_info(f"surge: batch size {size} holds the whole dataset ({length} samples); stopping")
                    break
                if size >= max_val:
                    rank_zero_info(f"surge: reached max_val={max_val}; stopping")
                    break
                nxt = min(size * 2, max_val)
            elif mode == "binsearch" and bad - good > 1:
                nxt = (good + bad) // 2
            else:
                break
        else:
            bad = size
            rank_zero_info(f"surge: batch size {size} ran out of memory")
            if mode == "power" and good is not None:
                break
            lower = good if good is not None else 0
            if bad - lower <= 1:
                break
            nxt = (lower + bad) // 2 if mode == "binsearch" or good is None else good
        rank_zero_info(f"surge: batch size {size} {'fits' if good == size else 'does not'}; trying {nxt}")
        size = nxt
        trials.set_size(size)
    if good is None:
        raise MisconfigurationError(f"scale_batch_size: even batch size {size} ran out of memory (started at "
                                    f"init_val={init_val})")
    if mode == "binsearch" and margin > 0:
        good = max(1, int(good * (1 - margin)))
    trials.set_size(good)
    rank_zero_info(f"surge: batch size finder chose {batch_arg_name}={good}")
    return good


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
        from .callbacks.lr_finder import LearningRateFinder

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
        from .callbacks.batch_size_finder import BatchSizeFinder

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

