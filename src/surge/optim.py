"""Reading what ``configure_optimizers`` returns, and the optimizer handle manual optimisation uses."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from .utils import SurgeError

_SHAPES = (
    "an optimizer; a list of optimizers; ([optimizers], [schedulers]); a dict {'optimizer': opt, "
    "'lr_scheduler': scheduler or {'scheduler': s, 'interval': 'step'|'epoch', 'frequency': n, 'monitor': name}}; "
    "or a list of such dicts"
)


@dataclass
class SchedulerConfig:
    """One LR scheduler and when it steps."""

    scheduler: Any
    interval: str = "epoch"     # "epoch" or "step"
    frequency: int = 1          # step every n intervals
    monitor: Optional[str] = None  # metric passed to ReduceLROnPlateau-style schedulers
    strict: bool = True         # a missing monitor is an error (True) or a warning (False)
    name: Optional[str] = None
    opt_idx: int = 0

    @property
    def needs_metric(self) -> bool:
        return isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def parse_optimizers(returned) -> tuple[list, list[SchedulerConfig]]:
    """Split ``configure_optimizers``' return value into optimizers and scheduler configs."""
    if isinstance(returned, torch.optim.Optimizer):
        return [returned], []
    if isinstance(returned, dict):
        return _parse_dicts([returned])
    if isinstance(returned, (list, tuple)):
        items = list(returned)
        if len(items) == 2 and isinstance(items[0], (list, tuple)) and isinstance(items[1], (list, tuple)):
            opts = list(items[0])
            _check_optimizers(opts)
            return opts, [_scheduler_config(s, opts) for s in items[1]]
        if items and all(isinstance(i, dict) for i in items):
            return _parse_dicts(items)
        if items and all(isinstance(i, torch.optim.Optimizer) for i in items):
            return items, []
    raise SurgeError(f"configure_optimizers returned {_describe(returned)}; expected {_SHAPES}")


def _parse_dicts(dicts) -> tuple[list, list[SchedulerConfig]]:
    opts, configs = [], []
    for d in dicts:
        unknown = set(d) - {"optimizer", "lr_scheduler", "monitor", "frequency"}
        if "optimizer" not in d or unknown:
            raise SurgeError(
                f"configure_optimizers returned a dict with keys {sorted(d)}; it needs 'optimizer' and may have "
                f"'lr_scheduler' and 'monitor'" + (f" (unknown: {sorted(unknown)})" if unknown else "")
            )
        _check_optimizers([d["optimizer"]])
        opts.append(d["optimizer"])
        if d.get("lr_scheduler") is not None:
            sched = d["lr_scheduler"]
            if not isinstance(sched, dict):
                sched = {"scheduler": sched}
            if d.get("monitor") is not None:
                sched = {"monitor": d["monitor"], **sched}
            configs.append(_scheduler_config(sched, opts))
    return opts, configs


def _scheduler_config(item, opts) -> SchedulerConfig:
    if isinstance(item, SchedulerConfig):
        return item
    if not isinstance(item, dict):
        item = {"scheduler": item}
    allowed = {"scheduler", "interval", "frequency", "monitor", "strict", "name"}
    if "scheduler" not in item or set(item) - allowed:
        raise SurgeError(f"an lr_scheduler dict needs 'scheduler' and may have {sorted(allowed - {'scheduler'})}; got keys {sorted(item)}")
    config = SchedulerConfig(**item)
    if config.interval not in ("step", "epoch"):
        raise SurgeError(f"lr_scheduler 'interval' must be 'step' or 'epoch', got {config.interval!r}")
    if not isinstance(config.frequency, int) or isinstance(config.frequency, bool) or config.frequency < 1:
        raise SurgeError(f"lr_scheduler 'frequency' must be a positive int, got {config.frequency!r}")
    if not hasattr(config.scheduler, "step") or not hasattr(config.scheduler, "optimizer"):
        raise SurgeError(f"lr_scheduler must be a torch LR scheduler, got {_describe(config.scheduler)}")
    if config.needs_metric and config.monitor is None:
        raise SurgeError(
            "ReduceLROnPlateau needs a metric: return {'optimizer': opt, 'lr_scheduler': sched, 'monitor': 'val_loss'} "
            "from configure_optimizers"
        )
    ids = [id(o) for o in opts]
    config.opt_idx = ids.index(id(config.scheduler.optimizer)) if id(config.scheduler.optimizer) in ids else 0
    return config


def _check_optimizers(opts) -> None:
    for o in opts:
        if not isinstance(o, torch.optim.Optimizer):
            raise SurgeError(f"configure_optimizers returned {_describe(o)} where an optimizer was expected; expected {_SHAPES}")


def _describe(obj) -> str:
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of [{', '.join(type(o).__name__ for o in obj)}]"
    return f"a {type(obj).__name__}" if obj is not None else "None"


class OptimizerHandle:
    """Wraps a user's optimizer for manual optimisation: ``step()`` runs through the Trainer's
    precision (the grad scaler) and counts ``global_step``; everything else is the optimizer's own."""

    def __init__(self, optimizer, trainer):
        self.optimizer = optimizer
        self._trainer = trainer

    def step(self, closure=None):
        """Step the optimizer. ``closure`` (zero_grad, forward, ``manual_backward``, return the loss) is
        handed to the optimizer, which may call it several times (LBFGS); ``on_before_optimizer_step``
        and gradient clipping follow each call, as they need its gradients."""
        trainer = self._trainer
        if closure is None:
            trainer._before_optimizer_step(self.optimizer)
            stepped = trainer.strategy.optimizer_step(self.optimizer)
        else:
            def closure_then_hooks():
                with torch.enable_grad():
                    loss = closure()
                trainer._before_optimizer_step(self.optimizer)
                return loss

            stepped = trainer.strategy.optimizer_step(self.optimizer, closure_then_hooks)
        trainer.state.global_step += 1
        return stepped

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def __repr__(self):
        return f"OptimizerHandle({self.optimizer!r})"
