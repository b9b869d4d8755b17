"""``surge.lightning.utilities.types``: the type names Lightning code annotates its hooks with.

Types only, no behaviour: ``training_step(...) -> STEP_OUTPUT``, ``configure_optimizers(self) ->
OptimizerLRScheduler``, ``train_dataloader(self) -> TRAIN_DATALOADERS``. ``LRSchedulerConfig`` is the class
of the entries of ``trainer.lr_scheduler_configs`` (:class:`surge.optim.SchedulerConfig`).
"""
from collections.abc import Mapping, Sequence
from typing import Any, Optional, TypedDict, Union

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from ...optim import SchedulerConfig as LRSchedulerConfig

# What a step hook may return: a loss tensor, a dict holding "loss" (and anything else), or None.
STEP_OUTPUT = Optional[Union[Tensor, Mapping[str, Any]]]
# Dataloader hooks may return any iterable, or a list / dict of them.
TRAIN_DATALOADERS = Any
EVAL_DATALOADERS = Any

LRSchedulerTypeTuple = (LRScheduler, ReduceLROnPlateau)
LRSchedulerTypeUnion = Union[LRScheduler, ReduceLROnPlateau]
LRSchedulerType = Union[type[LRScheduler], type[ReduceLROnPlateau]]
LRSchedulerPLType = LRSchedulerTypeUnion


class LRSchedulerConfigType(TypedDict, total=False):
    """The dict form of a scheduler in ``configure_optimizers``' return value (``scheduler`` is required)."""

    scheduler: LRSchedulerTypeUnion
    name: Optional[str]
    interval: str
    frequency: int
    reduce_on_plateau: bool
    monitor: Optional[str]
    strict: bool


class OptimizerConfig(TypedDict):
    optimizer: Optimizer


class OptimizerLRSchedulerConfig(TypedDict, total=False):
    """``{"optimizer": ..., "lr_scheduler": ..., "monitor": ...}`` (``optimizer`` and ``lr_scheduler`` required)."""

    optimizer: Optimizer
    lr_scheduler: Union[LRSchedulerTypeUnion, LRSchedulerConfigType]
    monitor: str


# Every shape ``configure_optimizers`` may return.
OptimizerLRScheduler = Optional[Union[
    Optimizer,
    Sequence[Optimizer],
    tuple[Sequence[Optimizer], Sequence[Union[LRSchedulerTypeUnion, LRSchedulerConfig]]],
    OptimizerConfig,
    OptimizerLRSchedulerConfig,
    Sequence[OptimizerConfig],
    Sequence[OptimizerLRSchedulerConfig],
]]

__all__ = ["STEP_OUTPUT", "TRAIN_DATALOADERS", "EVAL_DATALOADERS", "LRSchedulerConfig", "LRSchedulerConfigType",
           "LRSchedulerTypeTuple", "LRSchedulerTypeUnion", "LRSchedulerType", "LRSchedulerPLType", "OptimizerConfig",
           "OptimizerLRSchedulerConfig", "OptimizerLRScheduler"]
