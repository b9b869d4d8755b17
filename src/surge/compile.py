"""``Trainer(compile=True)``: compile the module's forward with ``torch.compile``.

What is compiled is the module's call, ``self(x)`` (``nn.Module.compile``), not ``training_step``: the
step keeps its Python (``self.log``, hooks, the strategy's bookkeeping) and only the tensor work of the
forward becomes a graph. So logging never breaks the graph — as long as ``self.log`` is called in
``training_step`` (where Lightning's tutorials call it), not inside ``forward``. A ``training_step`` that
calls a submodule directly (``self.net(x)``) instead of ``self(x)`` runs that submodule uncompiled.

``nn.Module.compile`` compiles in place: parameter names, ``state_dict`` keys and checkpoints are the
same as without compile (``torch.compile(module)`` would prefix them with ``_orig_mod.``).
Under DDP and FSDP the user's module inside the wrapper is compiled (the wrapper's hooks stay eager).

torch._dynamo is imported only here, when a Trainer with ``compile=`` sets up: ``import surge`` and a
Trainer without it never load it.
"""
from __future__ import annotations

import inspect
from typing import Optional

import torch

from .utils import MisconfigurationError


def check_compile_arg(value) -> Optional[dict]:
    """``None`` (do not compile) or the keyword arguments for ``torch.compile``; a clear error otherwise."""
    if value is False or value is None:
        return None
    if value is True:
        return {}
    if isinstance(value, dict):
        accepted = set(inspect.signature(torch.compile).parameters) - {"model"}
        unknown = sorted(set(value) - accepted)
        if unknown:
            raise MisconfigurationError(f"compile={value!r}: {', '.join(map(repr, unknown))} is not a torch.compile "
                                        f"argument; accepted: {', '.join(sorted(accepted))}")
        return dict(value)
    raise MisconfigurationError(f"compile must be True, False or a dict of torch.compile arguments "
                                f"(e.g. {{'mode': 'max-autotune'}}), got {value!r}")


def compile_module(module: torch.nn.Module, options: dict) -> None:
    """Compile ``module``'s call in place (once: a second fit with the same options reuses it)."""
    if getattr(module, "_surge_compile_options", None) == options:
        return
    module.compile(**options)
    module._surge_compile_options = dict(options)
