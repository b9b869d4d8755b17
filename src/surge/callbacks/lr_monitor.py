"""LearningRateMonitor: log each optimizer's learning rate (and momentum) as training goes."""
from __future__ import annotations

from typing import Optional

from ..utils import MisconfigurationError
from .base import Callback


class LearningRateMonitor(Callback):
    """Log ``lr-<Optimizer>`` (``/pg<i>`` per extra param group) every ``logging_interval``.

    Args:
        logging_interval: "step", "epoch", or None (follow each scheduler's interval; epoch without one).
        log_momentum: also log ``momentum`` (or Adam's beta1).

    Example::

        surge.Trainer(callbacks=[LearningRateMonitor(logging_interval="step")])
    """

    def __init__(self, logging_interval: Optional[str] = None, log_momentum: bool = False):
        if logging_interval not in (None, "step", "epoch"):
            raise MisconfigurationError(f"LearningRateMonitor(logging_interval={logging_interval!r}): choose 'step', 'epoch' or None")
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum

    def _interval(self, trainer) -> str:
        if self.logging_interval:
            return self.logging_interval
        configs = trainer.lr_scheduler_configs
        return configs[0].interval if configs else "epoch"

    def _values(self, trainer) -> dict[str, float]:
        out = {}
        names: dict[str, int] = {}
        for opt in trainer.optimizers:
            base = f"lr-{type(opt).__name__}"
            count = names.get(base, 0)
            names[base] = count + 1
            name = base if count == 0 else f"{base}-{count}"
            for i, group in enumerate(opt.param_groups):
                key = name if len(opt.param_groups) == 1 else f"{name}/pg{i + 1}"
                out[key] = float(group["lr"])
                if self.log_momentum:
                    mom = group.get("momentum", group.get("betas", (None,))[0])
                    if mom is not None:
                        out[key.replace("lr-", "momentum-", 1)] = float(mom)
        return out

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self._interval(trainer) == "step" and trainer.state.batches_seen % (trainer.log_every_n_steps or 1) == 0:
            trainer._write_metrics(self._values(trainer))

    def on_train_epoch_start(self, trainer, module) -> None:
        if self._interval(trainer) == "epoch":
            trainer._write_metrics(self._values(trainer))
