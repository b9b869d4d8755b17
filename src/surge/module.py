"""Module: the user's model together with its training, evaluation and optimisation code."""
from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import nn

from .hparams import HyperparametersMixin


class Module(HyperparametersMixin, nn.Module):
    """An ``nn.Module`` that also says how to train itself.

    Override ``training_step`` and ``configure_optimizers`` (required), and any of
    ``validation_step``, ``test_step``, ``predict_step`` and the ``on_*`` hooks.

    Example::

        class Regressor(surge.Module):
            def __init__(self, lr=1e-2):
                super().__init__()
                self.save_hyperparameters()
                self.net = torch.nn.Linear(8, 1)

            def training_step(self, batch, batch_idx):
                x, y = batch
                loss = torch.nn.functional.mse_loss(self.net(x), y)
                self.log("train_loss", loss)
                return loss

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Plain attributes set with object.__setattr__ so nn.Module does not register them.
        object.__setattr__(self, "_trainer", None)
        object.__setattr__(self, "_automatic_optimization", True)
        object.__setattr__(self, "_warned_no_trainer", False)

    # ------------------------------------------------------------------ properties
    @property
    def trainer(self):
        """The Trainer running this module (``None`` outside a run)."""
        return self._trainer

    @trainer.setter
    def trainer(self, trainer) -> None:
        object.__setattr__(self, "_trainer", trainer)

    @property
    def automatic_optimization(self) -> bool:
        """``True`` (default): surge does backward, optimizer step and zero_grad.
        ``False``: ``training_step`` does them itself with ``self.optimizers()`` and
        ``self.manual_backward(loss)``."""
        return self._automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        object.__setattr__(self, "_automatic_optimization", bool(value))

    @property
    def device(self) -> torch.device:
        """The device of the module's first parameter or buffer (CPU when it has none)."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the module's first floating-point parameter."""
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer else 0

    @property
    def global_rank(self) -> int:
        return self._trainer.global_rank if self._trainer else 0

    @property
    def local_rank(self) -> int:
        return self._trainer.local_rank if self._trainer else 0

    @property
    def logger(self):
        """The Trainer's first logger, or ``None``."""
        return self._trainer.logger if self._trainer else None

    @property
    def loggers(self) -> list:
        return self._trainer.loggers if self._trainer else []

    # ------------------------------------------------------------------ steps (override)
    def training_step(self, batch, batch_idx):
        """Return the loss (a scalar tensor), a dict with key ``"loss"``, or ``None`` to skip."""
        raise NotImplementedError

    def configure_optimizers(self):
        """Return an optimizer; a list of them; ``([optimizers], [schedulers])``; a dict
        ``{"optimizer": opt, "lr_scheduler": sched or {"scheduler": sched, "interval": "step"|"epoch",
        "frequency": 1, "monitor": "val_loss"}}``; or a list of such dicts."""
        raise NotImplementedError

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        """Default: ``self(batch)``. Override to unpack the batch or post-process outputs."""
        return self(batch)

    # validation_step and test_step are deliberately absent: the Trainer skips a loop whose step
    # the user did not write, exactly as it checks ``hasattr(module, "validation_step")``.

    # ------------------------------------------------------------------ logging
    def log(
        self,
        name: str,
        value,
        prog_bar: bool = False,
        logger: Optional[bool] = None,
        on_step: Optional[bool] = None,
        on_epoch: Optional[bool] = None,
        reduce_fx: Union[str, Callable] = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: Optional[int] = None,
        metric_attribute: Optional[str] = None,
        rank_zero_only: bool = False,
    ) -> None:
        """Record a metric.

        Defaults follow the hook it is called from: in ``training_step`` and the train batch hooks
        ``on_step=True, on_epoch=False``; everywhere else ``on_step=False, on_epoch=True``.
        Epoch values reduce with ``reduce_fx`` ("mean" weighted by batch size, "sum", "max", "min");
        ``sync_dist=True`` also reduces across processes. Values stay on their device until a logger
        or the progress bar needs them.

        Example::

            self.log("val_acc", acc, prog_bar=True)
        """
        trainer = self._trainer
        if trainer is None or trainer._results is None:
            if not self._warned_no_trainer:
                warnings.warn(f"self.log({name!r}) was called outside a Trainer run; the value is dropped")
                object.__setattr__(self, "_warned_no_trainer", True)
            return
        trainer._results.log(
            name, value, prog_bar=prog_bar, logger=True if logger is None else logger,
            on_step=on_step, on_epoch=on_epoch, reduce_fx=reduce_fx, enable_graph=enable_graph,
            sync_dist=sync_dist, add_dataloader_idx=add_dataloader_idx, batch_size=batch_size,
            rank_zero_only=rank_zero_only,
        )

    def log_dict(self, dictionary: Mapping[str, Any], **kwargs) -> None:
        """``self.log`` for every item of ``dictionary`` with the same keyword arguments."""
        if not isinstance(dictionary, Mapping):
            raise TypeError(f"log_dict expects a mapping of name -> value, got {type(dictionary).__name__}")
        for k, v in dictionary.items():
            self.log(k, v, **kwargs)

    def print(self, *args, **kwargs) -> None:
        """``print`` on global rank 0 only."""
        if self.global_rank == 0:
            print(*args, **kwargs)

    # ------------------------------------------------------------------ optimisation helpers
    def optimizers(self, use_surge_optimizer: bool = True):
        """The optimizer (or list of them) from ``configure_optimizers``, for manual optimisation.

        Their ``step()`` goes through the Trainer's precision (grad scaler) and counts
        ``global_step``.
        """
        trainer = self._require_trainer("optimizers")
        opts = trainer._optimizer_handles if use_surge_optimizer else trainer.optimizers
        return opts[0] if len(opts) == 1 else list(opts)

    def lr_schedulers(self):
        """The scheduler (or list of them) from ``configure_optimizers``; ``None`` if there are none."""
        trainer = self._require_trainer("lr_schedulers")
        scheds = [c.scheduler for c in trainer.lr_scheduler_configs]
        if not scheds:
            return None
        return scheds[0] if len(scheds) == 1 else scheds

    def manual_backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        """``loss.backward()`` through the Trainer's strategy and precision (use this, not
        ``loss.backward()``, under manual optimisation)."""
        trainer = self._require_trainer("manual_backward")
        trainer._backward(loss, *args, **kwargs)

    def clip_gradients(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip the gradients of ``optimizer``'s parameters by norm (default) or by value."""
        trainer = self._require_trainer("clip_gradients")
        trainer._clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm or "norm")

    def toggle_optimizer(self, optimizer) -> None:
        """Let only ``optimizer``'s parameters require grad (others are restored by ``untoggle``)."""
        own = {id(p) for g in _inner(optimizer).param_groups for p in g["params"]}
        saved = {}
        for p in self.parameters():
            saved[p] = p.requires_grad
            if id(p) not in own:
                p.requires_grad_(False)
        object.__setattr__(self, "_toggled", saved)

    def untoggle_optimizer(self, optimizer=None) -> None:
        for p, flag in getattr(self, "_toggled", {}).items():
            p.requires_grad_(flag)
        object.__setattr__(self, "_toggled", {})

    @contextmanager
    def toggled_optimizer(self, optimizer):
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def _require_trainer(self, what: str):
        if self._trainer is None:
            raise RuntimeError(f"{type(self).__name__}.{what}() needs a Trainer: call it during fit()")
        return self._trainer

    # ------------------------------------------------------------------ hooks (override any)
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def configure_model(self) -> None: ...
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch, batch_idx: int): ...
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None: ...
    def on_validation_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer) -> None: ...
    def on_before_zero_grad(self, optimizer) -> None: ...
    def on_save_checkpoint(self, checkpoint: dict) -> None: ...
    def on_load_checkpoint(self, checkpoint: dict) -> None: ...
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return batch
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return batch

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Move ``batch`` to ``device``: tensors inside dicts, lists, tuples, namedtuples and
        dataclasses are moved; anything with a ``.to(device)`` method is moved too."""
        from .data import move_to_device

        # Host-to-GPU copies need not block the host: the GPU's stream orders them before their use.
        return move_to_device(batch, device, non_blocking=torch.device(device).type == "cuda")

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """Step ``scheduler``; ``metric`` is the monitored value for ReduceLROnPlateau, else ``None``."""
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, strict: bool = True, **kwargs):
        """Rebuild the module from a checkpoint: ``cls(**saved_hyperparameters, **kwargs)``, then load
        its weights (``strict=True``: every key must match).

        Example::

            model = Regressor.load_from_checkpoint("surge_logs/version_0/checkpoints/last.ckpt")
        """
        from .checkpoint import load_checkpoint, load_module_state

        ckpt = load_checkpoint(checkpoint_path, map_location=map_location or "cpu")
        init_args = dict(ckpt.get("hyper_parameters") or {})
        init_args.update(kwargs)
        try:
            sig = inspect.signature(cls.__init__)
            takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
            if not takes_any:
                init_args = {k: v for k, v in init_args.items() if k in sig.parameters}
            module = cls(**init_args)
        except TypeError as err:
            raise TypeError(
                f"{cls.__name__}.load_from_checkpoint({str(checkpoint_path)!r}): could not rebuild the module "
                f"from the saved hyperparameters {sorted(init_args)}: {err}. Pass the missing init arguments "
                f"as keyword arguments to load_from_checkpoint."
            ) from err
        module.on_load_checkpoint(ckpt)
        load_module_state(module, ckpt["state_dict"], strict=strict, path=checkpoint_path)
        return module


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)
