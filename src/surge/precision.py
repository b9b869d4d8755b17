"""Numeric precision: the autocast context, the grad scaler and the parameter dtype of a run.

Each precision is a small class; ``get_precision(name, device)`` picks one from the Trainer's
``precision=`` argument.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from .utils import MisconfigurationError, rank_zero_warn

_ALIASES = {"32": "32-true", 32: "32-true", "32-true": "32-true",
            "64": "64-true", 64: "64-true", "64-true": "64-true",
            "16": "16-mixed", 16: "16-mixed", "16-mixed": "16-mixed",
            "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
            "bf16-true": "bf16-true", "16-true": "16-true"}
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")
_NOTHING = contextlib.nullcontext()  # reusable: float32 enters it every step


class Precision:
    """Full float32 (``"32-true"``). Base class: subclasses change the pieces they need."""

    name = "32-true"
    param_dtype: Optional[torch.dtype] = None  # None: leave the module's dtype alone

    def __init__(self, device: torch.device):
        self.device = device

    def convert_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.param_dtype) if self.param_dtype is not None else module

    def autocast(self):
        """Context the forward pass runs in (the ``-true`` precisions: tensors created in it take the
        parameters' dtype, so ``torch.ones(n)`` in a step matches the model)."""
        return _default_dtype(self.param_dtype) if self.param_dtype is not None else _NOTHING

    def convert_input(self, data):
        """``data`` with its floating-point tensors in the parameters' dtype (the ``-true`` precisions;
        a float32 batch would not multiply with float64 or bf16 weights). Integer tensors stay as they are."""
        if self.param_dtype is None:
            return data
        dtype = self.param_dtype
        return torch.utils._pytree.tree_map(
            lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t, data)

    def backward(self, loss: torch.Tensor, *args, module=None, **kwargs) -> None:
        """Backward of ``loss`` through ``module.backward`` (the module's overridable hook), or ``loss.backward``."""
        if module is None:
            loss.backward(*args, **kwargs)
        else:
            module.backward(loss, *args, **kwargs)

    def unscale(self, optimizer) -> None:
        """Make gradients true-valued before clipping or inspecting them."""

    def optimizer_step(self, optimizer, closure=None, **kwargs) -> bool:
        """Step ``optimizer`` (handing it ``closure``, which LBFGS calls several times, and any keyword
        arguments its ``step`` takes); return whether it really stepped (a scaler may skip the step)."""
        optimizer.step(closure=closure, **kwargs)
        return True

    def check_optimizers(self, optimizers: list) -> None:
        """Warn about optimizer settings this precision cannot represent (after configure_optimizers)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _has_grads(optimizer) -> bool:
    """Whether any parameter of ``optimizer`` holds a gradient (stops at the first that does)."""
    return any(p.grad is not None for group in optimizer.param_groups for p in group["params"])


class DoublePrecision(Precision):
    """float64 parameters and inputs' floating tensors stay float64 (``"64-true"``)."""

    name = "64-true"
    param_dtype = torch.float64


class HalfPrecision(Precision):
    """Parameters and computation in bf16 or fp16 with no fp32 master copy (``"bf16-true"``, ``"16-true"``)."""

    def __init__(self, device, dtype: torch.dtype):
        super().__init__(device)
        self.param_dtype = dtype
        self.name = "bf16-true" if dtype is torch.bfloat16 else "16-true"

    def check_optimizers(self, optimizers: list) -> None:
        # Adam's default eps (1e-8) is below float16's smallest number: it becomes 0, and the first
        # update divides by a square root that has underflowed to 0 too (inf, then a NaN loss).
        tiny = torch.finfo(self.param_dtype).smallest_normal
        for optimizer in optimizers:
            eps = [g["eps"] for g in optimizer.param_groups if isinstance(g.get("eps"), float)]
            if eps and min(eps) < tiny:
                rank_zero_warn(f"precision={self.name!r}: {type(optimizer).__name__}(eps={min(eps):g}) is below "
                               f"{self.param_dtype}'s smallest normal number ({tiny:.3g}), so the optimizer divides "
                               f"by about 0 and the loss soon turns NaN; pass eps=1e-4 or so, or use "
                               f"precision='bf16-true' or '16-mixed'")


class MixedPrecision(Precision):
    """fp32 parameters with the forward under autocast (``"bf16-mixed"``, ``"16-mixed"``).

    fp16 gradients can underflow, so ``"16-mixed"`` scales the loss with a GradScaler, which also skips
    steps whose gradients hold inf or NaN; ``skipped_steps`` counts them.
    """

    def __init__(self, device, dtype: torch.dtype):
        super().__init__(device)
        self.dtype = dtype
        self.name = "bf16-mixed" if dtype is torch.bfloat16 else "16-mixed"
        self.scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
        self.skipped_steps = 0
        self._unscaled: set[int] = set()
        self.autocast_cache = True  # cuda_graphs=True turns autocast's weight-cast cache off (graphs need that)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=self.autocast_cache)

    def backward(self, loss, *args, module=None, **kwargs) -> None:
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        super().backward(loss, *args, module=module, **kwargs)

    def unscale(self, optimizer) -> None:
        # Nothing to unscale after a window without backward: the step below leaves the scaler out then.
        if self.scaler is not None and id(optimizer) not in self._unscaled and _has_grads(optimizer):
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def optimizer_step(self, optimizer, closure=None, **kwargs) -> bool:
        if self.scaler is None:
            optimizer.step(closure=closure, **kwargs)
            return True
        if closure is not None:
            # GradScaler.step takes no closure: evaluate it once, then step on its gradients
            # (so optimizers that re-evaluate the closure, like LBFGS, do not work with "16-mixed").
            closure()
        if not _has_grads(optimizer):
            # No backward in this window (training_step returned None): GradScaler.step refuses an optimizer
            # it unscaled nothing for, and there is nothing to step. The step still counts, as in Lightning.
            self._unscaled.discard(id(optimizer))
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer, **kwargs)
        self.scaler.update()
        self._unscaled.discard(id(optimizer))  # after the step: the closure may have unscaled (to clip)
        # The scaler lowers its scale exactly when it skipped the step for inf/NaN gradients.
        stepped = self.scaler.get_scale() >= scale
        self.skipped_steps += not stepped
        return stepped

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps} if self.scaler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
            self.skipped_steps = state.get("skipped_steps", 0)


def agreeing_scaler(device_type: str):
    """A grad scaler for ranks that hold different gradients (FSDP shards, pipeline stages): its inf/NaN
    check is all-reduced over every rank, so all of them skip the same steps and keep the same scale."""
    import warnings

    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    # The scaler hands its one-element found_inf / scale tensors to DTensor ops on sharded gradients;
    # DTensor replicates them (correctly) but warns at every step. Silence that one warning.
    warnings.filterwarnings("ignore", message="Found a non-scalar tensor with numel=1", category=UserWarning,
                            module=r"torch\.distributed\.tensor")
    return ShardedGradScaler(device_type)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def normalize_precision(value) -> str:
    """The canonical name of a ``precision=`` value, or a clear error."""
    key = value.lower() if isinstance(value, str) else value
    # bool is an int, and 16.0 == 16 would find the alias: accept only real ints and strings.
    if isinstance(key, bool) or not isinstance(key, (int, str)) or key not in _ALIASES:
        raise MisconfigurationError(
            f"precision={value!r} is not supported; choose one of {', '.join(PRECISIONS)} "
            f"(or the short forms 32, 16, 64, 'bf16')"
        )
    if key in (16, "16", "bf16"):  # the old spellings that hide the "-mixed": say what they mean
        import warnings

        warnings.warn(f"precision={value!r} is the old spelling of precision={_ALIASES[key]!r}; use that",
                      DeprecationWarning, stacklevel=3)
    return _ALIASES[key]


def get_precision(name: str, device: torch.device) -> Precision:
    """The Precision for canonical ``name`` on ``device``; a clear error if the device cannot do it."""
    if name == "32-true":
        return Precision(device)
    if name == "64-true":
        return DoublePrecision(device)
    dtype = torch.bfloat16 if name.startswith("bf16") else torch.float16
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise MisconfigurationError(f"precision={name!r}: this GPU ({torch.cuda.get_device_name(device)}) has no bf16")
    if device.type == "mps" and dtype is torch.bfloat16 and not torch.backends.mps.is_macos_or_newer(14, 0):
        raise MisconfigurationError(f"precision={name!r}: bf16 on MPS needs macOS 14 or newer")
    if name.endswith("-true"):
        return HalfPrecision(device, dtype)
    _check_autocast(name, device, dtype)
    try:
        return MixedPrecision(device, dtype)
    except (RuntimeError, AssertionError, ValueError) as err:  # GradScaler on a device this torch cannot scale on
        raise MisconfigurationError(f"precision={name!r} is not available on {device.type} with torch "
                                    f"{torch.__version__} ({err}); use '32-true' or 'bf16-mixed'") from err


def _check_autocast(name: str, device: torch.device, dtype: torch.dtype) -> None:
    """Autocast on a device or dtype it does not support only warns and turns itself off, which would
    train in float32 while claiming mixed precision: make that an error at construction."""
    import warnings

    if not torch.amp.is_autocast_available(device.type):
        raise MisconfigurationError(f"precision={name!r}: this torch has no autocast for {device.type}; use '32-true'")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctx = torch.autocast(device.type, dtype=dtype)
    if not ctx._enabled or any("autocast" in str(w.message).lower() for w in caught):
        detail = "; ".join(str(w.message) for w in caught) or "autocast turned itself off"
        raise MisconfigurationError(f"precision={name!r} is not supported on {device.type} by torch "
                                    f"{torch.__version__} ({detail}); use '32-true' or another precision")
