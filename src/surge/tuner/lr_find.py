"""The learning-rate range test (:func:`lr_find`, :class:`LRFinder`): train a few steps while the rate rises,
then suggest the rate where the loss fell fastest. docs/tuner.md."""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch

from ..utils import MisconfigurationError, rank_zero_info, rank_zero_warn
from .trials import _Snapshot, _train_steps, _trial, has_hparam, set_hparam

log = logging.getLogger("surge.tuner")

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
        from ..callbacks.base import Callback

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
