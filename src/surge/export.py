"""Exporting a Module for serving: ONNX, TorchScript and ``torch.export`` programs.

:class:`surge.Module`'s ``to_onnx``, ``to_torchscript`` and ``to_exported_program`` call the functions
here; this file is imported only when one of them runs, so ``import surge`` never loads ``onnx``.

Every export runs under ``torch.no_grad()`` with the module in eval mode (dropout off, batch norm on
its running statistics: what serving computes), and puts the module back in the mode it was in. The
input sample goes through the module's own batch-transfer hooks (``on_before_batch_transfer``,
``transfer_batch_to_device``, ``on_after_batch_transfer``), so a sample made on the CPU follows a model
that lives on a GPU.

An input sample (``input_sample``, ``example_inputs``, or the module's ``example_input_array``) is read
as ``forward``'s arguments: a tensor is the one argument, a tuple or list the positional arguments, a
dict the keyword arguments.
"""
from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch

from .utils import MisconfigurationError

TORCHSCRIPT_METHODS = ("script", "trace")


def to_onnx(module, file_path=None, input_sample: Any = None, **kwargs):
    """Export ``module`` with ``torch.onnx.export(module, args, file_path, **kwargs)``; see :meth:`surge.Module.to_onnx`."""
    _require("onnx", "to_onnx()", "onnx")
    dynamo = kwargs.get("dynamo", _onnx_dynamo_default())
    if dynamo:
        # torch's exporter from a torch.export graph (the default from torch 2.9) writes through onnxscript.
        _require("onnxscript", "to_onnx(dynamo=True)", "onnx",
                 hint=" (or pass dynamo=False for the TorchScript-based exporter)")
    args, kw = _as_call(_sample(module, input_sample, "input_sample", "ONNX"))
    if kw:
        kwargs = dict(kwargs, kwargs={**kw, **(kwargs.get("kwargs") or {})})
    if isinstance(file_path, os.PathLike):
        file_path = os.fspath(file_path)
    with _serving(module):
        program = torch.onnx.export(module, args, None if dynamo else file_path, **kwargs)
    if dynamo and file_path is not None:
        # Saved here rather than by torch.onnx.export so that a file-like destination (BytesIO) works too.
        program.save(file_path)
    return program


def to_torchscript(module, file_path=None, method: Optional[str] = "script", example_inputs: Any = None,
                   **kwargs) -> torch.jit.ScriptModule:
    """Compile ``module`` with ``torch.jit.script`` or ``torch.jit.trace``; see :meth:`surge.Module.to_torchscript`."""
    if method not in TORCHSCRIPT_METHODS:
        raise MisconfigurationError(
            f"to_torchscript(method={method!r}): method must be one of {', '.join(map(repr, TORCHSCRIPT_METHODS))}"
        )
    if method == "script":
        with _serving(module):
            scripted = torch.jit.script(module, **kwargs)
    else:
        sample = _sample(module, example_inputs, "example_inputs", "TorchScript with method='trace'")
        args, kw = _as_call(sample)
        if kwargs.get("check_inputs") is not None:
            kwargs["check_inputs"] = [_to_device(module, c) for c in kwargs["check_inputs"]]
        with _serving(module):
            if kw and not args:
                scripted = torch.jit.trace(module, example_kwarg_inputs=kw, **kwargs)
            elif kw:
                raise ValueError("to_torchscript(method='trace'): torch.jit.trace takes positional or keyword "
                                 "example inputs, not both; give a tuple or a dict")
            else:
                scripted = torch.jit.trace(module, args, **kwargs)  # a tuple: forward's positional arguments
    if file_path is not None:
        # torch.jit.save takes a path or a writable file object; a str or PathLike goes in as a path.
        torch.jit.save(scripted, os.fspath(file_path) if isinstance(file_path, os.PathLike) else file_path)
    return scripted


def to_exported_program(module, file_path=None, input_sample: Any = None, **kwargs):
    """Capture ``module`` with ``torch.export.export``; see :meth:`surge.Module.to_exported_program`."""
    args, kw = _as_call(_sample(module, input_sample, "input_sample", "torch.export"))
    with _serving(module):
        program = torch.export.export(module, args, kw or None, **kwargs)
    if file_path is not None:
        torch.export.save(program, os.fspath(file_path) if isinstance(file_path, os.PathLike) else file_path)
    return program


# ---------------------------------------------------------------------- helpers
def _require(package: str, what: str, extra: str, hint: str = "") -> None:
    try:
        __import__(package)
    except ImportError as err:
        raise ModuleNotFoundError(f"{what} needs the {package!r} package: pip install {package} "
                                  f"(or pip install 'surge[{extra}]'){hint}") from err


def _onnx_dynamo_default() -> bool:
    """torch.onnx.export's own default for ``dynamo`` (False before torch 2.9, True since)."""
    param = inspect.signature(torch.onnx.export).parameters.get("dynamo")
    return bool(param.default) if param is not None and param.default is not inspect.Parameter.empty else False


def _sample(module, given: Any, argument: str, target: str) -> Any:
    """The input to export with, moved to the module's device: ``given``, else ``module.example_input_array``."""
    if given is None:
        given = module.example_input_array
        if given is None:
            raise ValueError(f"Could not export to {target}: neither `{argument}` nor `example_input_array` "
                             f"is set. Pass {argument}=<a batch for forward> or set "
                             f"`self.example_input_array` in the module's __init__.")
    return _to_device(module, given)


def _to_device(module, sample: Any) -> Any:
    sample = module.on_before_batch_transfer(sample, 0)
    sample = module.transfer_batch_to_device(sample, module.device, 0)
    return module.on_after_batch_transfer(sample, 0)


def _as_call(sample: Any) -> tuple[tuple, dict]:
    """``forward``'s ``(args, kwargs)`` for a sample: a tensor is one argument, a tuple or list the
    positional ones, a dict the keyword ones."""
    if isinstance(sample, dict):
        return (), dict(sample)
    if isinstance(sample, (tuple, list)) and not hasattr(sample, "_fields"):  # a namedtuple is one argument
        return tuple(sample), {}
    return (sample,), {}


@contextmanager
def _serving(module) -> Iterator[None]:
    """Eval mode and no autograd for the export; the module's own mode afterwards, even on error."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)
