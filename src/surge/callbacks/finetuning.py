"""Fine-tuning callbacks: freeze part of a model before fit, unfreeze it later into its own param group.

:class:`BaseFinetuning` holds the tools (freeze, make trainable, add a param group for parameters the
optimizer does not have yet) and calls two methods a subclass writes: ``freeze_before_training(module)``
at setup and ``finetune_function(module, epoch, optimizer)`` at the start of every training epoch, once per
optimizer. :class:`BackboneFinetuning` is the common case: ``module.backbone`` frozen until an epoch, then
trained with its own, rising learning rate.

Which parameters each param group holds is saved in checkpoints (by parameter name), so a resumed fit
rebuilds the param groups the run had added before the optimizer state is loaded into them.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Callable, Optional, Union

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..utils import MisconfigurationError, rank_zero_warn
from .base import Callback

_log = logging.getLogger("surge")

Modules = Union[nn.Module, Iterable[Union[nn.Module, Iterable]]]


def multiplicative(epoch: int) -> float:
    """BackboneFinetuning's default ``lambda_func``: the backbone's learning rate grows 1.5x per epoch."""
    return 1.5


class BaseFinetuning(Callback):
    """Base class for callbacks that freeze and unfreeze parts of the model during fit.

    Example::

        class UnfreezeAt(BaseFinetuning):
            def __init__(self, epoch=10):
                super().__init__()
                self.epoch = epoch

            def freeze_before_training(self, module):
                self.freeze(module.feature_extractor)

            def finetune_function(self, module, epoch, optimizer):
                if epoch == self.epoch:
                    self.unfreeze_and_add_param_group(module.feature_extractor, optimizer)
    """

    def __init__(self) -> None:
        # optimizer index -> for each param group: its settings and the names of its parameters
        self._internal_optimizer_metadata: dict[int, list[dict[str, Any]]] = {}

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._internal_optimizer_metadata = state_dict["internal_optimizer_metadata"]

    def on_load_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        """A resumed fit: give the optimizers the param groups the run had added, before the Trainer loads
        the checkpoint's optimizer state into them (it would not fit the optimizers as configured)."""
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if not state or trainer.state.fn != "fit":
            return
        by_name = dict(module.named_parameters())
        for opt_idx, optimizer in enumerate(trainer.optimizers):
            saved = state["internal_optimizer_metadata"].get(opt_idx)
            if not saved:
                continue
            groups = []
            for group in saved:
                params = [by_name[name] for name in group["params"] if name in by_name]
                for param in params:
                    param.requires_grad = True
                groups.append({**group, "params": params})
            optimizer.param_groups.clear()
            for group in groups:
                optimizer.add_param_group(group)

    # ------------------------------------------------------------------ tools
    @staticmethod
    def flatten_modules(modules: Modules) -> list[nn.Module]:
        """The modules in ``modules`` (a module, or nested lists of them) that hold parameters of their own:
        every leaf module, and every module with direct parameters."""
        if isinstance(modules, nn.ModuleDict):
            modules = modules.values()
        if isinstance(modules, Iterable):
            found = []
            for m in modules:
                found.extend(BaseFinetuning.flatten_modules(m))
            return found
        if not isinstance(modules, nn.Module):
            raise MisconfigurationError(f"expected an nn.Module or an iterable of them, got {type(modules).__name__}")
        return [m for m in modules.modules() if not list(m.children()) or m._parameters]

    @staticmethod
    def filter_params(modules: Modules, train_bn: bool = True, requires_grad: bool = True):
        """The parameters of ``modules`` whose ``requires_grad`` equals ``requires_grad`` (batch-norm ones only
        when ``train_bn``), each once."""
        seen = set()
        for mod in BaseFinetuning.flatten_modules(modules):
            if isinstance(mod, _BatchNorm) and not train_bn:
                continue
            for param in mod.parameters(recurse=False):
                if param.requires_grad == requires_grad and id(param) not in seen:
                    seen.add(id(param))
                    yield param

    @staticmethod
    def make_trainable(modules: Modules) -> None:
        """Let every parameter of ``modules`` train again (``requires_grad=True``)."""
        for mod in BaseFinetuning.flatten_modules(modules):
            if isinstance(mod, _BatchNorm):
                mod.track_running_stats = True
            for param in mod.parameters(recurse=False):
                param.requires_grad = True

    @staticmethod
    def freeze_module(module: nn.Module) -> None:
        """Freeze one module's own parameters; a batch-norm layer also stops updating its running statistics."""
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
        for param in module.parameters(recurse=False):
            param.requires_grad = False

    @staticmethod
    def freeze(modules: Modules, train_bn: bool = True) -> None:
        """Freeze every parameter of ``modules``; with ``train_bn`` the batch-norm layers keep training."""
        for mod in BaseFinetuning.flatten_modules(modules):
            if isinstance(mod, _BatchNorm) and train_bn:
                BaseFinetuning.make_trainable(mod)
            else:
                BaseFinetuning.freeze_module(mod)

    @staticmethod
    def filter_on_optimizer(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor]) -> list:
        """``params`` less those some param group of ``optimizer`` holds already (a warning names the skip)."""
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = list(params)
        fresh = [p for p in params if id(p) not in held]
        if len(fresh) != len(params):
            rank_zero_warn("The provided params to be frozen already exist within another group of this optimizer. "
                           "Those parameters will be skipped.")
        return fresh

    def unfreeze_and_add_param_group(self, modules: Modules, optimizer: torch.optim.Optimizer,
                                     lr: Optional[float] = None, initial_denom_lr: float = 10.0,
                                     train_bn: bool = True) -> None:
        """Unfreeze ``modules`` and give their parameters (those the optimizer lacks) a new param group, with
        learning rate ``lr``, or the first group's divided by ``initial_denom_lr`` when ``lr`` is None."""
        self.make_trainable(modules)
        group_lr = optimizer.param_groups[0]["lr"] / initial_denom_lr if lr is None else float(lr)
        params = self.filter_on_optimizer(optimizer, self.filter_params(modules, train_bn=train_bn))
        if params:
            optimizer.add_param_group({"params": params, "lr": group_lr})

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer, module, stage: str) -> None:
        if stage == "fit":
            self.freeze_before_training(module)

    def on_train_epoch_start(self, trainer, module) -> None:
        names = {id(p): name for name, p in module.named_parameters()}
        for opt_idx, optimizer in enumerate(trainer.optimizers):
            self.finetune_function(module, trainer.current_epoch, optimizer)
            self._internal_optimizer_metadata[opt_idx] = [
                {**{k: v for k, v in group.items() if k != "params"},
                 "params": [names[id(p)] for p in group["params"] if id(p) in names]}
                for group in optimizer.param_groups]

    def finetune_function(self, pl_module, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        """Called at the start of every training epoch for each optimizer: unfreeze what is due now."""
        raise NotImplementedError(f"{type(self).__name__} must define finetune_function(pl_module, epoch, optimizer)")

    def freeze_before_training(self, pl_module) -> None:
        """Called once before fit: freeze what should not train at first."""
        raise NotImplementedError(f"{type(self).__name__} must define freeze_before_training(pl_module)")


class BackboneFinetuning(BaseFinetuning):
    """Train ``module.backbone`` only from epoch ``unfreeze_backbone_at_epoch`` on, in its own param group.

    At that epoch the backbone's learning rate starts at ``backbone_initial_lr`` (default: the first param
    group's learning rate times ``backbone_initial_ratio_lr``); each later epoch multiplies it by
    ``lambda_func(epoch + 1)`` (1.5), capped at the first group's rate when ``should_align``. With
    ``train_bn`` the backbone's batch-norm layers train all along.

    Example::

        trainer = surge.Trainer(callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=5)])
    """

    def __init__(self, unfreeze_backbone_at_epoch: int = 10, lambda_func: Callable = multiplicative,
                 backbone_initial_ratio_lr: float = 10e-2, backbone_initial_lr: Optional[float] = None,
                 should_align: bool = True, initial_denom_lr: float = 10.0, train_bn: bool = True,
                 verbose: bool = False, rounding: int = 12) -> None:
        super().__init__()
        self.unfreeze_backbone_at_epoch = unfreeze_backbone_at_epoch
        self.lambda_func = lambda_func
        self.backbone_initial_ratio_lr = backbone_initial_ratio_lr
        self.backbone_initial_lr = backbone_initial_lr
        self.should_align = should_align
        self.initial_denom_lr = initial_denom_lr
        self.train_bn = train_bn
        self.verbose = verbose
        self.rounding = rounding
        self.previous_backbone_lr: Optional[float] = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous_backbone_lr": self.previous_backbone_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_backbone_lr = state_dict["previous_backbone_lr"]
        super().load_state_dict(state_dict)

    def setup(self, trainer, module, stage: str) -> None:
        if stage == "fit" and not isinstance(getattr(module, "backbone", None), nn.Module):
            raise MisconfigurationError("The LightningModule should have a nn.Module `backbone` attribute: "
                                        f"BackboneFinetuning freezes it, and {type(module).__name__} has none")
        super().setup(trainer, module, stage)

    def freeze_before_training(self, pl_module) -> None:
        self.freeze(pl_module.backbone, train_bn=self.train_bn)

    def finetune_function(self, pl_module, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        current_lr = optimizer.param_groups[0]["lr"]
        if epoch == self.unfreeze_backbone_at_epoch:
            backbone_lr = self.backbone_initial_lr if self.backbone_initial_lr is not None \
                else current_lr * self.backbone_initial_ratio_lr
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, backbone_lr, train_bn=self.train_bn,
                                              initial_denom_lr=self.initial_denom_lr)
        elif epoch > self.unfreeze_backbone_at_epoch:
            backbone_lr = self.lambda_func(epoch + 1) * self.previous_backbone_lr
            if self.should_align and backbone_lr > current_lr:
                backbone_lr = current_lr
            optimizer.param_groups[-1]["lr"] = backbone_lr
        else:
            return
        self.previous_backbone_lr = backbone_lr
        if self.verbose:
            _log.info(f"Current lr: {round(current_lr, self.rounding)}, "
                      f"Backbone lr: {round(backbone_lr, self.rounding)}")
