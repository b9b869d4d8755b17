"""Module: the user's model together with its training, evaluation and optimisation code."""
from __future__ import annotations

import inspect
import numbers
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import nn

from .hparams import HyperparametersMixin
from .module_hooks import ModuleHooks
from .utils import MisconfigurationError


class Module(HyperparametersMixin, ModuleHooks, nn.Module):
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

    # torch.jit.script compiles a module's properties unless they are listed here; these read the
    # Trainer or Python-only state and mean nothing inside a TorchScript program.
    __jit_unused_properties__ = [
        "trainer", "automatic_optimization", "device", "on_gpu", "dtype", "current_epoch", "global_step",
        "global_rank", "local_rank", "logger", "loggers", "hparams", "example_input_array",
    ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Plain attributes set with object.__setattr__ so nn.Module does not register them.
        object.__setattr__(self, "_trainer", None)
        object.__setattr__(self, "_example_input_array", None)
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
    def on_gpu(self) -> bool:
        """``True`` when the module's parameters (or buffers) are on a CUDA device."""
        return self.device.type == "cuda"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the module's first floating-point parameter."""
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    @property
    def example_input_array(self):
        """A sample input for ``forward``, used by the exports when they are given none: a tensor is
        ``forward``'s one argument, a tuple its positional arguments, a dict its keyword arguments.

        Example: ``self.example_input_array = torch.zeros(1, 28 * 28)`` in ``__init__``, then
        ``model.to_onnx("model.onnx")``.
        """
        return self.__dict__.get("_example_input_array")

    @example_input_array.setter
    def example_input_array(self, example) -> None:
        object.__setattr__(self, "_example_input_array", example)

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
        if getattr(trainer, "barebones", False):  # warned at every call: Python's filter shows it once per line
            warnings.warn(f"self.log({name!r}) does nothing: `Trainer(barebones=True)` is configured, which measures "
                          f"the Trainer's own speed, so logging is disabled (the value is dropped)", stacklevel=2)
            return
        if trainer is None or trainer._results is None:
            if not self._warned_no_trainer:
                warnings.warn(f"self.log({name!r}) was called outside a Trainer run; the value is dropped (the "
                              f"`self.trainer` reference is not registered: no Trainer is running this module)")
                object.__setattr__(self, "_warned_no_trainer", True)
            return
        if metric_attribute is None and not isinstance(value, (torch.Tensor, numbers.Number)):
            metric_attribute = self._metric_attribute(name, value)
        if logger and not trainer.loggers and not trainer.fast_dev_run:
            self._warn_no_logger(name)
        trainer._results.log(
            name, value, prog_bar=prog_bar, logger=True if logger is None else logger,
            on_step=on_step, on_epoch=on_epoch, reduce_fx=reduce_fx, enable_graph=enable_graph,
            sync_dist=sync_dist, add_dataloader_idx=add_dataloader_idx, batch_size=batch_size,
            rank_zero_only=rank_zero_only, metric_attribute=metric_attribute,
        )

    def _metric_attribute(self, name: str, value) -> Optional[str]:
        """For a torchmetrics ``Metric`` logged as it is: the attribute of this module that holds it (as Lightning,
        surge requires one: the metric then moves with the module and its state is the module's)."""
        from .results import is_metric_object

        if not is_metric_object(value):
            return None  # not a metric: Results says what is wrong with the value
        found = {id(m): attr for attr, m in self.named_modules() if is_metric_object(m)}
        if id(value) in found:
            return found[id(value)]
        kind = type(value).__name__
        if not found:
            raise MisconfigurationError(
                f"self.log({name!r}) was given a torchmetrics {kind} that is not an attribute of "
                f"{type(self).__name__}. You can fix this by setting an attribute for the metric in your module "
                f"(`self.{name.replace('/', '_')} = {kind}(...)` in __init__), so that it moves to the module's "
                f"device and its state is saved with the module")
        raise MisconfigurationError(
            f"self.log({name!r}) was given a torchmetrics {kind} that is not an attribute of {type(self).__name__}. "
            f"Log one of the module's own metrics, or name it: You can fix this by calling `self.log({name}, ..., "
            f"metric_attribute=name)` where `name` is one of {sorted(found.values())}")

    def _warn_no_logger(self, name: str) -> None:
        warned = getattr(self, "_warned_no_logger", None)
        if warned is None:
            warned = set()
            object.__setattr__(self, "_warned_no_logger", warned)
        if name not in warned:
            warned.add(name)
            warnings.warn(f"You called `self.log({name!r}, ..., logger=True)` but have no logger configured: the "
                          f"value reaches callback_metrics only. Pass Trainer(logger=...) to record it")

    def log_dict(self, dictionary: Mapping[str, Any], **kwargs) -> None:
        """``self.log`` for every item of ``dictionary`` with the same keyword arguments. ``dictionary`` may be a
        torchmetrics ``MetricCollection``: each of its metrics is logged under its (prefixed) name.

        Example::

            self.log_dict({"val_loss": loss, "val_acc": acc}, prog_bar=True)
        """
        from .results import is_metric_collection

        if is_metric_collection(dictionary):
            items = dictionary.items(keep_base=False)
        elif isinstance(dictionary, Mapping):
            items = dictionary.items()
        else:
            raise TypeError(f"log_dict expects a mapping of name -> value, got {type(dictionary).__name__}")
        for k, v in items:
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
        results = trainer._results
        hook = results.hook
        trainer._call("on_before_backward", loss)
        trainer._backward(loss, *args, **kwargs)
        trainer._call("on_after_backward")
        results.hook = hook  # what training_step logs after this is still training_step's

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

    # ------------------------------------------------------------------ exports (see surge/export.py)
    def to_onnx(self, file_path=None, input_sample=None, **kwargs):
        """Save the module as an ONNX model with ``torch.onnx.export`` (needs ``pip install 'surge[onnx]'``).

        Args:
            file_path: a path (str or PathLike) or a writable binary file; None saves nothing.
            input_sample: the input to export with; None uses :attr:`example_input_array`.
            **kwargs: passed to ``torch.onnx.export``; e.g. ``dynamo=False`` picks the TorchScript-based
                exporter, ``dynamic_shapes=`` / ``dynamic_axes=`` a variable batch size.

        Returns torch's result: an ``ONNXProgram`` from the ``torch.export``-based exporter (torch's
        default since 2.9), None from the TorchScript-based one. The export runs in eval mode.

        Example::

            model.to_onnx("model.onnx", torch.randn(1, 64))
            session = onnxruntime.InferenceSession("model.onnx")
        """
        from .export import to_onnx

        return to_onnx(self, file_path, input_sample, **kwargs)

    def to_torchscript(self, file_path=None, method: Optional[str] = "script", example_inputs=None, **kwargs):
        """Compile the module to a ``torch.jit.ScriptModule`` (in eval mode) and return it.

        Args:
            file_path: where to ``torch.jit.save`` it (a path or a writable file); None saves nothing.
            method: ``"script"`` (``torch.jit.script``, the default) or ``"trace"`` (``torch.jit.trace``
                with ``example_inputs``, else :attr:`example_input_array`).
            **kwargs: passed to ``torch.jit.script`` / ``torch.jit.trace``.

        PyTorch deprecates TorchScript; :meth:`to_exported_program` is the ``torch.export`` route.

        Example::

            model.to_torchscript("model.pt")
            same = torch.jit.load("model.pt")
        """
        from .export import to_torchscript

        return to_torchscript(self, file_path, method, example_inputs, **kwargs)

    def to_exported_program(self, file_path=None, input_sample=None, **kwargs):
        """Capture the module with ``torch.export.export`` (in eval mode) and return the ``ExportedProgram``
        (surge's own; Lightning has no such method).

        Args:
            file_path: where to ``torch.export.save`` it (conventionally ``.pt2``); None saves nothing.
            input_sample: the input to export with; None uses :attr:`example_input_array`.
            **kwargs: passed to ``torch.export.export``, e.g. ``dynamic_shapes=``, ``strict=``.

        Example::

            model.to_exported_program("model.pt2", torch.randn(4, 64))
            out = torch.export.load("model.pt2").module()(torch.randn(4, 64))
        """
        from .export import to_exported_program

        return to_exported_program(self, file_path, input_sample, **kwargs)

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


# ====================================================================== what a hook's signature takes
def _positional(fn) -> Optional[tuple[list, bool]]:
    """The positional parameter names of ``fn`` (bound: without ``self``) and whether it takes ``*args``;
    ``None`` when Python cannot tell (a builtin)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names, any(p.kind is p.VAR_POSITIONAL for p in params)


def takes_batch_idx(step) -> bool:
    """Whether a ``*_step`` method gets ``batch_idx``: it names it, takes ``*args``, or has two positional
    parameters or more (Lightning's rule: ``training_step(self, batch)`` is called with the batch alone)."""
    found = _positional(step)
    if found is None:
        return True
    names, varargs = found
    return "batch_idx" in names or varargs or len(names) >= 2


def takes_dataloader_idx(hook) -> Optional[bool]:
    """Whether ``hook`` accepts ``dataloader_idx`` (named or through ``*args``): ``True``; ``False``; or, when it
    names it without a default, ``None`` (it cannot be called without one)."""
    found = _positional(hook)
    if found is None:
        return True
    names, varargs = found
    if "dataloader_idx" in names:
        param = inspect.signature(hook).parameters["dataloader_idx"]
        return True if param.default is not param.empty else None
    return varargs
