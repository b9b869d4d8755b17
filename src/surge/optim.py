"""Reading what ``configure_optimizers`` returns, and the optimizer handle manual optimisation uses."""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, fields
from typing import Any, Optional

import torch

from .utils import MisconfigurationError, SurgeError, rank_zero_warn

_SHAPES = (
    "an optimizer; a list of optimizers; ([optimizers], [schedulers]); a dict {'optimizer': opt, "
    "'lr_scheduler': scheduler or {'scheduler': s, 'interval': 'step'|'epoch', 'frequency': n, 'monitor': name}}; "
    "or a list of such dicts"
)
_OPTIMIZER_KEYS = {"optimizer", "lr_scheduler", "monitor"}
# Keys that only say how the Trainer steps a scheduler: under manual optimisation the user steps it.
_STEPPING_KEYS = ("monitor", "strict", "reduce_on_plateau")


@dataclass
class SchedulerConfig:
    """One LR scheduler and when the Trainer steps it (under automatic optimisation; under manual
    optimisation ``training_step`` steps it and only ``interval`` is read, by LearningRateMonitor).

    ``scheduler`` is a torch LR scheduler or, when the module overrides ``lr_scheduler_step``, any object
    that hook knows how to step."""

    scheduler: Any
    name: Optional[str] = None
    interval: str = "epoch"     # "epoch" or "step"
    frequency: int = 1          # step every n intervals
    reduce_on_plateau: bool = False  # steps with the monitored metric (ReduceLROnPlateau)
    monitor: Optional[str] = None  # the metric handed to lr_scheduler_step
    strict: bool = True         # a missing monitor is an error (True) or a warning (False)
    opt_idx: int = 0            # which optimizer it belongs to

    @property
    def needs_metric(self) -> bool:
        return self.reduce_on_plateau


_CONFIG_KEYS = {f.name for f in fields(SchedulerConfig)} - {"opt_idx"}


def parse_optimizers(returned, automatic: bool = True, module=None) -> tuple[list, list[SchedulerConfig]]:
    """Split ``configure_optimizers``' return value into optimizers and scheduler configs.

    ``automatic``: whether the Trainer steps the schedulers (automatic optimisation). ``module``: the
    LightningModule/surge Module, whose ``lr_scheduler_step`` override lets any object be a scheduler.
    """
    optimizers, schedulers = _split(returned)
    configs = [_scheduler_config(item, optimizers, automatic) for item in schedulers]
    for config in configs:
        _check_scheduler(config, optimizers, automatic, module)
    return optimizers, configs


def _split(returned) -> tuple[list, list]:
    """The optimizers, and the scheduler items (a scheduler or a dict, top-level ``monitor`` merged in)."""
    if isinstance(returned, torch.optim.Optimizer):
        return [returned], []
    if isinstance(returned, dict):
        return _split_dicts([returned])
    if isinstance(returned, (list, tuple)):
        items = list(returned)
        if len(items) == 2 and isinstance(items[0], (list, tuple)) and items[0] \
                and all(isinstance(o, torch.optim.Optimizer) for o in items[0]):
            opts = list(items[0])
            scheds = items[1]
            return opts, list(scheds) if isinstance(scheds, (list, tuple)) else [scheds]
        if items and all(isinstance(i, dict) for i in items):
            return _split_dicts(items)
        if items and all(isinstance(i, torch.optim.Optimizer) for i in items):
            return items, []
        if len(items) == 2 and isinstance(items[0], (list, tuple)):
            _check_optimizers(items[0])
    raise MisconfigurationError(f"Unknown configuration for model optimizers: configure_optimizers returned "
                                f"{_describe(returned)}; expected {_SHAPES}")


def _split_dicts(dicts) -> tuple[list, list]:
    opts, scheds = [], []
    for d in dicts:
        if "optimizer" not in d:
            raise SurgeError(f"configure_optimizers returned a dict with keys {sorted(d)}; it needs 'optimizer' and "
                             f"may have 'lr_scheduler' and 'monitor'")
        unknown = set(d) - _OPTIMIZER_KEYS
        if unknown:
            rank_zero_warn(f"Found unsupported keys in the optimizer configuration: {unknown}; configure_optimizers' "
                           f"dict takes 'optimizer', 'lr_scheduler' and 'monitor', and the others are ignored",
                           RuntimeWarning)
        _check_optimizers([d["optimizer"]])
        opts.append(d["optimizer"])
        sched = d.get("lr_scheduler")
        if sched is not None:
            sched = dict(sched) if isinstance(sched, dict) else {"scheduler": sched}
            if d.get("monitor") is not None:
                sched.setdefault("monitor", d["monitor"])
            scheds.append(sched)
    return opts, scheds


def _scheduler_config(item, opts, automatic: bool) -> SchedulerConfig:
    if isinstance(item, SchedulerConfig):
        return item
    item = dict(item) if isinstance(item, dict) else {"scheduler": item}
    if "scheduler" not in item:
        raise MisconfigurationError(
            f'The lr scheduler dict must have the key "scheduler" (the scheduler itself) and may have '
            f"{sorted(_CONFIG_KEYS - {'scheduler'})}; got keys {sorted(item)}")
    unknown = set(item) - _CONFIG_KEYS
    if unknown:
        rank_zero_warn(f"Found unsupported keys in the lr scheduler dict: {unknown}, which are ignored; it takes "
                       f"{sorted(_CONFIG_KEYS)}", RuntimeWarning)
        item = {k: v for k, v in item.items() if k in _CONFIG_KEYS}
    if not automatic:
        ignored = [k for k in _STEPPING_KEYS if k in item]
        if ignored:
            rank_zero_warn(f"The lr scheduler dict contains the key(s) {ignored}, but the keys will be ignored: "
                           f"under manual optimisation training_step steps the scheduler itself "
                           f"(sch.step() or sch.step(metric))", RuntimeWarning)
        item = {k: v for k, v in item.items() if k not in _STEPPING_KEYS}
    item.setdefault("reduce_on_plateau", automatic and isinstance(
        item["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau))
    config = SchedulerConfig(**item)
    if automatic and isinstance(config.scheduler, torch.optim.lr_scheduler.OneCycleLR) and config.interval == "epoch":
        rank_zero_warn("A `OneCycleLR` scheduler is using 'interval': 'epoch', so it takes one step per epoch "
                       "where it is usually sized in optimizer steps. Are you sure you didn't mean 'interval': 'step'?",
                       RuntimeWarning)
    if config.interval not in ("step", "epoch"):
        raise MisconfigurationError(f'The "interval" key in lr scheduler dict must be "step" or "epoch", '
                                    f"got {config.interval!r}")
    if not isinstance(config.frequency, int) or isinstance(config.frequency, bool) or config.frequency < 1:
        raise MisconfigurationError(f"The \"frequency\" key in lr scheduler dict must be a positive int, "
                                    f"got {config.frequency!r}")
    if automatic and config.reduce_on_plateau and config.monitor is None:
        raise MisconfigurationError(
            f"`configure_optimizers` must include a monitor when a `ReduceLROnPlateau` scheduler is used: "
            f"{type(config.scheduler).__name__} steps on a metric, so say which: return {{'optimizer': opt, "
            f"'lr_scheduler': sched, 'monitor': 'val_loss'}} (or 'monitor' inside the lr_scheduler dict)")
    return config


def _check_scheduler(config: SchedulerConfig, opts, automatic: bool, module) -> None:
    """The scheduler can be checkpointed, stepped and tied to one of the returned optimizers."""
    sched = config.scheduler
    name = type(sched).__name__
    if not (callable(getattr(sched, "state_dict", None)) and callable(getattr(sched, "load_state_dict", None))):
        raise TypeError(f"The provided lr scheduler `{name}` is invalid: it needs `state_dict()` and "
                        f"`load_state_dict()` methods, which checkpoints save and restore it with")
    is_torch = isinstance(sched, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau))
    if automatic and not is_torch and not _overrides_lr_scheduler_step(module):
        raise MisconfigurationError(
            f"The provided lr scheduler `{name}` doesn't follow PyTorch's LRScheduler API, so the Trainer cannot "
            f"step it: override `{type(module).__name__ if module is not None else 'Module'}.lr_scheduler_step"
            f"(self, scheduler, metric)` to step it, or step it yourself under manual optimisation")
    owner = getattr(sched, "optimizer", None)
    if owner is None:
        if automatic and not is_torch and len(opts) > 1:
            raise MisconfigurationError(f"lr scheduler `{name}` has no `.optimizer`, so surge cannot tell which of the "
                                        f"{len(opts)} optimizers it belongs to; give it an `optimizer` attribute")
        return
    ids = [id(o) for o in opts]
    if id(owner) not in ids:
        raise MisconfigurationError(f"lr scheduler `{name}` is attached with an optimizer that wasn't returned from "
                                    f"configure_optimizers; build it on one of the returned optimizers")
    config.opt_idx = ids.index(id(owner))


def _overrides_lr_scheduler_step(module) -> bool:
    if module is None:
        return False
    from .module import Module

    if "lr_scheduler_step" in vars(module):  # assigned on the instance
        return True
    return getattr(type(module), "lr_scheduler_step", None) is not getattr(Module, "lr_scheduler_step")


def _check_optimizers(opts) -> None:
    for o in opts:
        if not isinstance(o, torch.optim.Optimizer):
            raise SurgeError(f"configure_optimizers returned {_describe(o)} where an optimizer was expected; expected {_SHAPES}")


def _describe(obj) -> str:
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of [{', '.join(type(o).__name__ for o in obj)}]"
    return f"a {type(obj).__name__}" if obj is not None else "None"


def install_optimizers(trainer) -> None:
    """Call the module's ``configure_optimizers`` and set the trainer up with what it returns: its optimizers,
    their schedulers, the handles manual optimisation steps, and whether ``training_step`` takes
    ``optimizer_idx``. Combinations the run cannot train raise here, before the first step."""
    module = trainer.module
    trainer._results.hook = "configure_optimizers"
    returned = module.configure_optimizers()
    if returned is None:
        if module.automatic_optimization:
            raise SurgeError(f"{type(module).__name__}.configure_optimizers returned None; return an optimizer "
                             f"(or set automatic_optimization = False and step nothing)")
        trainer.optimizers, trainer.lr_scheduler_configs = [], []
    else:
        trainer.optimizers, trainer.lr_scheduler_configs = parse_optimizers(
            returned, automatic=module.automatic_optimization, module=module)
    trainer._optimizer_handles = [OptimizerHandle(o, trainer) for o in trainer.optimizers]
    trainer.strategy.precision.check_optimizers(trainer.optimizers)
    trainer._step_takes_opt_idx = len(trainer.optimizers) > 1 and module.automatic_optimization \
        and "optimizer_idx" in inspect.signature(module.training_step).parameters
    if len(trainer.optimizers) > 1 and module.automatic_optimization and not trainer._step_takes_opt_idx:
        raise SurgeError(
            f"configure_optimizers returned {len(trainer.optimizers)} optimizers under automatic optimisation, so "
            f"training_step must take an `optimizer_idx` argument: training_step(self, batch, batch_idx, optimizer_idx)"
        )
    reason = trainer.strategy.manual_optimization_unsupported
    if not module.automatic_optimization and reason:
        raise MisconfigurationError(
            f"{type(module).__name__} sets automatic_optimization = False, which strategy="
            f"{trainer.strategy.name!r} cannot train yet: {reason}. Use automatic optimization (several "
            f"optimizers: training_step(self, batch, batch_idx, optimizer_idx)), or one device")
    if not module.automatic_optimization and trainer.accumulate_grad_batches > 1:
        raise MisconfigurationError(
            f"Automatic gradient accumulation is not supported for manual optimization: remove "
            f"`Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches})` (it does nothing when "
            f"automatic_optimization = False) and step the optimizer every n batches in training_step"
        )


class OptimizerHandle:
    """Wraps a user's optimizer for manual optimisation: ``step()`` runs through the Trainer's
    precision (the grad scaler) and counts ``global_step``; everything else (``param_groups``, ``state``,
    ``defaults``, ``state_dict()``...) is the optimizer's own. This is what ``self.optimizers()`` returns
    (Lightning's ``LightningOptimizer`` under ``surge.lightning``).

    Example (two optimizers, a GAN)::

        g_opt, d_opt = self.optimizers()
        with d_opt.toggle_model():         # only the discriminator's parameters get gradients
            self.manual_backward(d_loss)
            d_opt.step()
            d_opt.zero_grad()
    """

    def __init__(self, optimizer, trainer):
        self.optimizer = optimizer
        self._trainer = trainer

    def step(self, closure=None, **kwargs):
        """Step the optimizer. ``closure`` (zero_grad, forward, ``manual_backward``, return the loss) is
        handed to the optimizer, which may call it several times (LBFGS); ``on_before_optimizer_step``
        and gradient clipping follow each call, as they need its gradients. Other keyword arguments go to
        the optimizer's own ``step`` (for optimizers whose ``step`` takes more than a closure)."""
        trainer = self._trainer
        if closure is None:
            trainer._before_optimizer_step(self.optimizer)
            stepped = trainer.strategy.optimizer_step(self.optimizer, **kwargs)
        else:
            def closure_then_hooks():
                with torch.enable_grad():
                    loss = closure()
                trainer._before_optimizer_step(self.optimizer)
                return loss

            stepped = trainer.strategy.optimizer_step(self.optimizer, closure_then_hooks, **kwargs)
        trainer.state.global_step += 1
        return stepped

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @contextlib.contextmanager
    def toggle_model(self, sync_grad: bool = True):
        """Inside the block only this optimizer's parameters require grad (the module's
        ``toggle_optimizer``); ``sync_grad=False`` also skips the gradient all-reduce of backward across
        processes (accumulating over several steps under DDP: sync on the last one)."""
        trainer = self._trainer
        module = trainer.lightning_module
        with trainer.strategy.no_backward_sync(not sync_grad):
            module.toggle_optimizer(self)
            try:
                yield
            finally:
                module.untoggle_optimizer(self)

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def __repr__(self):
        return f"OptimizerHandle({self.optimizer!r})"
