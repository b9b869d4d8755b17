"""LearningRateMonitor: log each optimizer's learning rate (and momentum, weight decay) as training goes."""
from __future__ import annotations

from collections import defaultdict
from typing import Optional

import torch

from ..utils import MisconfigurationError, rank_zero_warn
from .base import Callback


class LearningRateMonitor(Callback):
    """Log the learning rate of every param group, with Lightning's metric names.

    Names: ``lr-<Optimizer>`` (or the scheduler config's ``name``); a second optimizer of the same class
    is ``lr-<Optimizer>-1``; with several param groups, ``<name>/pg1``, ``<name>/pg2``... or
    ``<name>/<group's "name">``. ``log_momentum`` adds ``<name>-momentum`` (Adam's beta1 where the optimizer
    has betas, 0 where it has neither) and ``log_weight_decay`` adds ``<name>-weight_decay``.

    When: an optimizer with a scheduler follows the scheduler's interval ("step": before each batch, every
    ``log_every_n_steps``; "epoch": at each epoch's start); one without a scheduler is logged at both.
    ``logging_interval="step"`` or ``"epoch"`` logs every optimizer at that interval only. The values also go
    into ``trainer.callback_metrics`` (EarlyStopping or ModelCheckpoint can monitor them), and their history
    into ``lrs`` (name -> list of values), ``last_momentum_values`` and ``last_weight_decay_values``.

    It needs a logger: a Trainer without one is an error at the start of training.

    Example::

        surge.Trainer(callbacks=[LearningRateMonitor(logging_interval="step")])
    """

    def __init__(self, logging_interval: Optional[str] = None, log_momentum: bool = False,
                 log_weight_decay: bool = False):
        if logging_interval not in (None, "step", "epoch"):
            raise MisconfigurationError(f"LearningRateMonitor(logging_interval={logging_interval!r}): "
                                        f"logging_interval should be `step` or `epoch` or `None`.")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: dict[str, list[float]] = {}
        self.last_momentum_values: dict[str, Optional[float]] = {}
        self.last_weight_decay_values: dict[str, Optional[float]] = {}

    # ------------------------------------------------------------------ names
    def _groups(self, trainer) -> list[tuple[torch.optim.Optimizer, list[str], Optional[str]]]:
        """Each optimizer with the names of its param groups and its scheduler's interval (None: no scheduler);
        the optimizers with a scheduler first, in the order of ``trainer.lr_scheduler_configs``."""
        out, seen, per_class = [], [], defaultdict(int)

        def names_of(optimizer, base, counted):
            seen.append(optimizer)
            cls = type(optimizer)
            if counted:
                per_class[cls] += 1
            if per_class[cls] > 1:
                base = f"{base}-{per_class[cls] - 1}"
            groups = optimizer.param_groups
            labels = [g.get("name", f"pg{i + 1}") for i, g in enumerate(groups)]
            twice = {label for label in labels if labels.count(label) > 1}
            if twice:
                raise MisconfigurationError(
                    f"A single `Optimizer` cannot have multiple parameter groups with identical `name` values. "
                    f"{base} has duplicated parameter group names {twice}")
            if len(groups) > 1:
                return [f"{base}/{label}" for label in labels]
            return [f"{base}/{groups[0]['name']}" if groups[0].get("name") else base]

        for config in trainer.lr_scheduler_configs:
            optimizer = config.scheduler.optimizer
            base = config.name if config.name is not None else f"lr-{type(optimizer).__name__}"
            out.append((optimizer, names_of(optimizer, base, counted=config.name is None), config.interval))
        for optimizer in trainer.optimizers:
            optimizer = getattr(optimizer, "optimizer", optimizer)  # an OptimizerHandle: the torch optimizer
            if any(optimizer is s for s in seen):
                continue
            out.append((optimizer, names_of(optimizer, f"lr-{type(optimizer).__name__}", counted=True), None))
        return out

    def _follow_renames(self, names: list[str]) -> None:
        """A param group added during fit (fine-tuning) turns ``lr-SGD`` into ``lr-SGD/pg1``: its history moves."""
        for name in names:
            old = name.replace("/pg1", "")
            if "/pg1" in name and old in self.lrs:
                self.lrs[name] = self.lrs.pop(old)
            self.lrs.setdefault(name, [])

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer, module) -> None:
        if not trainer.loggers:
            raise MisconfigurationError("Cannot use `LearningRateMonitor` callback with `Trainer` that has no logger.")
        groups = self._groups(trainer)
        if self.log_momentum and any("momentum" not in opt.defaults and "betas" not in opt.defaults
                                     for opt, _, _ in groups):
            rank_zero_warn("You have set log_momentum=True, but some optimizers do not have momentum. This will log a "
                           "value 0 for the momentum.", category=RuntimeWarning)
        names = [name for _, group_names, _ in groups for name in group_names]
        self.lrs = {name: [] for name in names}
        self.last_momentum_values = {f"{name}-momentum": None for name in names}
        self.last_weight_decay_values = {f"{name}-weight_decay": None for name in names}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        every = trainer.log_every_n_steps or 1
        if self.logging_interval == "epoch" or ((trainer.state.batches_seen + 1) % every and not trainer.should_stop):
            return
        self._log(trainer, "step" if self.logging_interval is None else "any")

    def on_train_epoch_start(self, trainer, module) -> None:
        if self.logging_interval != "step":
            self._log(trainer, "epoch" if self.logging_interval is None else "any")

    # ------------------------------------------------------------------ values
    def _log(self, trainer, interval: str) -> None:
        stats = {}
        for optimizer, names, sched_interval in self._groups(trainer):
            if sched_interval is not None and interval not in (sched_interval, "any"):
                continue
            self._follow_renames(names)
            use_betas = "betas" in optimizer.defaults
            for group, name in zip(optimizer.param_groups, names):
                stats[name] = group["lr"]
                self.lrs[name].append(group["lr"])
                if self.log_momentum:
                    momentum = group["betas"][0] if use_betas else group.get("momentum", 0)
                    stats[f"{name}-momentum"] = self.last_momentum_values[f"{name}-momentum"] = momentum
                if self.log_weight_decay:
                    decay = group.get("weight_decay", 0)
                    stats[f"{name}-weight_decay"] = self.last_weight_decay_values[f"{name}-weight_decay"] = decay
        if not stats:
            return
        device = trainer.strategy.root_device
        trainer.callback_metrics.update({k: torch.tensor(float(v), device=device) for k, v in stats.items()})
        trainer._write_metrics({k: float(v) for k, v in stats.items()})
