"""What one training step hands to user code and reads back from it: the optimizer a module's own
``optimizer_step`` gets, the loss in ``training_step``'s return value, and that value as
``on_train_batch_end`` sees it. Used by :mod:`surge.fit_loop`."""
from __future__ import annotations

import torch

from .utils import SurgeError


class _OptimizerStep:
    """The optimizer a module's own ``optimizer_step`` gets under automatic optimisation: ``step(closure)`` runs
    the ``on_before_optimizer_step`` hooks, clips and steps through the strategy and its precision, as surge's
    own step does. Forward and backward have run before (surge computes the loss first, so that gradient
    accumulation and pipelines work the same with or without this hook): the closure returns their loss."""

    def __init__(self, trainer, optimizer, loss):
        self.optimizer = optimizer
        self._trainer, self._loss = trainer, loss
        self.stepped = False

    def closure(self):
        return self._loss

    def step(self, closure=None, **kwargs):
        if closure is not None:
            closure()
        trainer = self._trainer
        trainer._before_optimizer_step(self.optimizer)
        trainer.strategy.optimizer_step(self.optimizer, **kwargs)  # kwargs: for the optimizer's own step
        self.stepped = True
        return self._loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def __repr__(self) -> str:
        return f"optimizer_step's {self.optimizer!r}"


def _check_step_output(output, manual: bool, needs_grad: bool = True):
    """The loss in ``training_step``'s return value (``None``: skip this batch's backward)."""
    if output is None:
        return None
    if isinstance(output, torch.Tensor):
        if manual:
            return None
        if output.numel() != 1:
            raise SurgeError(f"training_step returned a tensor of shape {tuple(output.shape)}; the loss must be a scalar")
        if needs_grad and not output.requires_grad:
            raise SurgeError("training_step returned a loss that does not require grad (computed under no_grad, or "
                             "detached?); return the loss tensor from the forward pass")
        return output
    if isinstance(output, dict):
        if manual:
            return None
        if "loss" not in output:
            raise SurgeError(f"training_step returned a dict without a 'loss' key (keys: {sorted(output)})")
        return _check_step_output(output["loss"], manual=False, needs_grad=needs_grad)
    if manual:
        return None
    raise SurgeError(f"training_step must return a loss tensor, a dict with 'loss', or None; got {type(output).__name__}")


def _detached_output(output):
    """``training_step``'s output for ``on_train_batch_end``: a loss tensor becomes ``{"loss": loss}``;
    the tensors of a dict are detached (a list: one output per optimizer)."""
    if isinstance(output, list):
        return [_detached_output(o) for o in output]
    if isinstance(output, torch.Tensor):
        return {"loss": output.detach()}
    if isinstance(output, dict):
        return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in output.items()}
    return output
