"""``Pipeline(data_parallel="fsdp")``: each stage sharded with ``fully_shard`` over the ``dp`` sub-mesh.

A stage's replicas then hold 1/dp of its parameters, gradients and optimizer state each (DTensors).
torch's ``PipelineStage`` knows FSDP2 modules: it keeps the gathered parameters and skips the gradient
reduction on every micro-batch's backward, then reduce-scatters the summed gradients once at the end of
the schedule (``perform_reduce_grad``). These helpers turn the shards into whole plain tensors for a
checkpoint and back, so that a checkpoint looks exactly as in the replicated layout.

Every function that calls ``full_tensor()`` is a collective over the dp group: every rank of the group
calls it with the same keys in the same order (they hold the same stage, so their dicts match).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

DATA_PARALLEL = ("replicate", "fsdp")


@contextlib.contextmanager
def gradients_kept(module: nn.Module, active: bool = True):
    """Keep ``module``'s gradients across a schedule's step. The first step of a new schedule (a new
    batch shape, or the first evaluation) infers its shapes with a real forward and backward, after which
    torch sets ``param.grad = None`` on every FSDP module: inside an accumulation window that would drop
    the window's gradients so far. A gradient FSDP accumulated into in place is left alone; one that was
    dropped comes back, plus what the step reduced into its place."""
    if not active:
        yield
        return
    saved = [(p, p.grad) for p in module.parameters() if p.grad is not None]
    yield
    for param, grad in saved:
        if param.grad is None:
            param.grad = grad
        elif param.grad is not grad:
            param.grad += grad


def shard_stages(stage_modules: list[nn.Module], mesh) -> None:
    """``fully_shard`` every block of each stage (one all-gather per block), then the stage itself (the
    root unit, which holds the embedding and the head): the module that ``PipelineStage`` sees."""
    from torch.distributed.fsdp import fully_shard

    for stage in stage_modules:
        for block in stage.body:
            fully_shard(block, mesh=mesh)
        fully_shard(stage, mesh=mesh)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t``: the local shard of a DTensor, or ``t`` itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def whole(t):
    """``t`` as one plain tensor (a collective for a DTensor), anything else as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_state(state: dict) -> dict:
    """A module state dict with every DTensor gathered into a plain tensor."""
    return {k: whole(v) for k, v in state.items()}


def full_optimizer_state(state: dict) -> dict:
    """``optimizer.state_dict()`` with every DTensor state (momentum, Adam's moments) gathered whole:
    the form a replicated stage saves, which loads into either layout."""
    per_param = {i: {k: whole(v) for k, v in s.items()} for i, s in state["state"].items()}
    return {"state": per_param, "param_groups": state["param_groups"]}


def like(value, target):
    """``value`` (a whole tensor) as ``target`` holds it: this rank's shard if ``target`` is a DTensor.
    No communication: every rank of the dp group has the whole value and keeps its own slice."""
    if not hasattr(target, "device_mesh") or not isinstance(value, torch.Tensor) or hasattr(value, "device_mesh") \
            or value.shape != target.shape:  # a mismatch: left for load_state_dict to report by name
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(target.device, target.dtype), target.device_mesh, target.placements,
                             src_data_rank=None)


def shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After ``optimizer.load_state_dict`` of a whole state: shard each state tensor shaped like its
    (DTensor) parameter, as the optimizer's own step would have created it."""
    for param, state in optimizer.state.items():
        if hasattr(param, "device_mesh"):
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and not hasattr(v, "device_mesh") and v.shape == param.shape:
                    state[k] = like(v, param)
