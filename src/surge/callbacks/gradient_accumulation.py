"""GradientAccumulationScheduler: accumulate gradients over a number of batches that changes with the epoch."""
from __future__ import annotations

from ..utils import MisconfigurationError, rank_zero_warn
from .base import Callback


class GradientAccumulationScheduler(Callback):
    """Set ``trainer.accumulate_grad_batches`` at the start of each training epoch from ``scheduling``.

    ``scheduling`` maps a (zero-based) epoch to the number of batches whose gradients add up before one
    optimizer step, from that epoch on: ``{0: 4, 2: 2, 5: 1}`` accumulates 4 batches in epochs 0-1, 2 in
    epochs 2-4 and steps every batch from epoch 5. Epochs before the first key accumulate nothing (factor 1).
    The fit loop reads the factor at every batch, so the optimizer steps at every ``factor``-th batch of the
    epoch (and at its last batch, as with the Trainer's own argument).

    It replaces ``Trainer(accumulate_grad_batches=...)``: a Trainer with a value other than 1 is an error at
    the start of training, and so is manual optimisation (``automatic_optimization = False``), where the
    module steps its optimizers itself.

    Example::

        # from the fifth epoch (index 4) on, one step every 2 batches
        surge.Trainer(callbacks=[GradientAccumulationScheduler(scheduling={4: 2})])
    """

    def __init__(self, scheduling: dict[int, int]):
        if not isinstance(scheduling, dict) or not scheduling:
            raise TypeError(f"GradientAccumulationScheduler(scheduling={scheduling!r}): an empty dict cannot be "
                            f"interpreted; pass {{epoch: accumulation factor}}, e.g. {{0: 4, 2: 1}}")
        epochs, factors = list(scheduling), list(scheduling.values())
        if any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in epochs):
            raise MisconfigurationError(f"Epoch should be an int greater than or equal to 0. Got {epochs}.")
        if any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in factors):
            raise MisconfigurationError(f"Accumulation factor should be an int greater than 0. Got {factors}.")
        # The caller's dict gains the epoch-0 entry, as in Lightning (code that reads `scheduling` sees it).
        scheduling.setdefault(0, 1)
        self.scheduling = scheduling
        self.epochs = sorted(scheduling)
        self._applied = None  # (trainer, factor) this callback last set: a second fit of that Trainer is no conflict

    def going_to_accumulate_grad_batches(self) -> bool:
        """Whether any epoch accumulates more than one batch."""
        return any(factor > 1 for factor in self.scheduling.values())

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        """The factor for ``epoch``: that of the latest scheduled epoch at or before it."""
        factor = 1
        for start in self.epochs:
            if start > epoch:
                break
            factor = self.scheduling[start]
        return factor

    def on_train_start(self, trainer, module) -> None:
        from ..datamodule import _overrides
        from ..module import Module

        if not module.automatic_optimization:
            raise RuntimeError("Automatic gradient accumulation and the `GradientAccumulationScheduler` is not "
                               "supported for manual optimization. Please remove the callback or switch to automatic "
                               "optimization.")
        accumulates = self.going_to_accumulate_grad_batches()
        if accumulates and (_overrides(module, "optimizer_step", Module) or _overrides(module, "optimizer_zero_grad", Module)):
            rank_zero_warn("When using `Trainer(accumulate_grad_batches != 1)` and overriding "
                           "`LightningModule.optimizer_{step,zero_grad}`, the hooks will not be called on every batch "
                           "(rather, they are called on every optimization step).")
        speed = getattr(trainer, "_speed", None)
        if accumulates and getattr(speed, "cuda_graphs", False):
            raise RuntimeError("Trainer(cuda_graphs=True) replays one batch's backward into fixed gradient buffers and "
                               "cannot accumulate: remove the GradientAccumulationScheduler or cuda_graphs")
        ours = self._applied is not None and self._applied[0] is trainer and self._applied[1] == trainer.accumulate_grad_batches
        if trainer.accumulate_grad_batches != 1 and not ours:
            raise ValueError("You have set `accumulate_grad_batches` and are using the `GradientAccumulationScheduler` "
                             "callback. Either remove `accumulate_grad_batches` from the Trainer or remove the callback.")

    def on_train_epoch_start(self, trainer, module) -> None:
        factor = self.get_accumulate_grad_batches(trainer.current_epoch)
        trainer.accumulate_grad_batches = factor
        self._applied = (trainer, factor)
