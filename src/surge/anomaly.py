"""What ``Trainer(detect_anomaly=True)`` reports: the first step where a gradient became NaN or inf,
and the parameters it happened in.

``torch.autograd.detect_anomaly`` stops a backward pass at the first operation that produced a NaN
and prints the forward traceback of that operation; it does not notice ``inf`` and does not say
which parameters were hit or at which training step. The Trainer adds both, at a cost (a device
sync per backward) that is fine in a debugging run and is never paid otherwise.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from .utils import SurgeError


def _where(state, batch_idx) -> str:
    batch = f", batch {batch_idx}" if batch_idx is not None else ""
    return f"global step {state.global_step} (epoch {state.epoch}{batch})"


@contextmanager
def report_backward_anomaly(state, batch_idx=None):
    """Re-raise torch's anomaly-mode error ("Function 'MulBackward0' returned nan values ...") as a
    :class:`SurgeError` that names the training step, keeping torch's message (which names the
    backward function; the parameters cannot be named, as the backward stopped half-way)."""
    try:
        yield
    except RuntimeError as err:
        if "returned nan values" not in str(err) and "returned inf values" not in str(err):
            raise
        raise SurgeError(f"a gradient became non-finite at {_where(state, batch_idx)}: {err}") from err


def nonfinite_gradients(module: torch.nn.Module) -> list[str]:
    """Names of the parameters whose ``.grad`` holds a NaN or inf (one device sync in all)."""
    named = [(name, p.grad) for name, p in module.named_parameters() if p.grad is not None]
    if not named:
        return []
    grads = [g.to_local() if hasattr(g, "to_local") else g for _, g in named]  # DTensor (FSDP2): the local shard
    finite = torch.stack([torch.isfinite(g).all().to(grads[0].device) for g in grads])
    if bool(finite.all()):
        return []
    return [name for (name, _), ok in zip(named, finite.tolist()) if not ok]


def check_gradients(module: torch.nn.Module, state, batch_idx=None) -> None:
    """Raise a :class:`SurgeError` naming the parameters with non-finite gradients, if any."""
    bad = nonfinite_gradients(module)
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise SurgeError(f"non-finite gradients (NaN or inf) at {_where(state, batch_idx)} in {len(bad)} "
                         f"parameter(s): {shown}")
