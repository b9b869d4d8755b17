"""The Strategy interface: how a batch becomes gradients and updated weights across devices.

A strategy owns the device placement of the module, the forward and backward of a batch, the
optimizer step (through its Precision), the collectives (reduce, barrier, broadcast, all_gather) and
how dataloaders are split across processes. ``SingleDevice`` is the whole interface at its simplest;
distributed strategies change only what they must.
"""
from __future__ import annotations

import contextlib
from typing import Any, Optional

import torch

from ..precision import Precision, get_precision

_REGISTRY: dict[str, type] = {}
_NOTHING = contextlib.nullcontext()  # reusable and reentrant: returned every step where nothing is to be done
_STEP_HOOKS = {stage: f"{stage}_step" for stage in ("training", "validation", "test", "predict")}


def register(*names: str):
    """Class decorator: make a Strategy available as ``Trainer(strategy=name)``."""

    def deco(cls):
        for n in names:
            _REGISTRY[n] = cls
        return cls

    return deco


class Strategy:
    """Base class. Subclasses set up processes and wrap the module; the Trainer calls only these methods."""

    name = "base"
    # Why fit cannot run a module with automatic_optimization = False here (None: it can).
    manual_optimization_unsupported: Optional[str] = None
    # Set by the Trainer for each fit: neither the precision (a grad scaler) nor the module (its own `backward`
    # hook) changes backward, so backward calls `loss.backward` itself, two Python calls fewer per step.
    direct_backward: bool = False

    def __init__(self) -> None:
        self.accelerator: str = "cpu"
        self.device_ids: list[int] = [0]
        self.num_nodes: int = 1
        self.root_device = torch.device("cpu")
        self.precision: Precision = Precision(self.root_device)
        self.module: Optional[torch.nn.Module] = None  # the user's module, unwrapped
        self.model: Optional[torch.nn.Module] = None   # what runs the forward (a wrapper under DDP)

    # ------------------------------------------------------------------ set-up
    def configure(self, accelerator: str, device_ids: list[int], num_nodes: int, precision: str) -> None:
        """Receive the Trainer's resolved ``accelerator``, ``devices`` and ``precision``."""
        self.accelerator, self.device_ids, self.num_nodes = accelerator, device_ids, num_nodes
        self.root_device = self._pick_root_device()
        self.precision = get_precision(precision, self.root_device)

    def _pick_root_device(self) -> torch.device:
        if self.accelerator == "cpu":
            return torch.device("cpu")
        return torch.device(self.accelerator, self.device_ids[self.local_rank])

    def launch(self, fn, *args, **kwargs):
        """Run ``fn`` in every process of the run (here: just this one) and return its result."""
        return fn(*args, **kwargs)

    def setup_environment(self) -> None:
        """Start what the processes share (a process group); select the device."""
        if self.root_device.type == "cuda":
            torch.cuda.set_device(self.root_device)

    def setup_module(self, module: torch.nn.Module) -> None:
        """Move ``module`` to the device in the precision's dtype, and wrap it if the strategy needs to."""
        module = self.precision.convert_module(module)
        module.to(self.root_device)
        self.module = module
        self.model = module

    def compile_module(self, options: dict) -> None:
        """``Trainer(compile=...)``: compile, in place, what runs the model's forward; here the module's
        call, ``self(x)`` (under DDP/FSDP: the user's module inside the wrapper)."""
        from ..compile import compile_module

        compile_module(self.module, options)

    def teardown(self) -> None:
        self.model = None

    # ------------------------------------------------------------------ processes
    world_size = 1
    global_rank = 0
    local_rank = 0
    node_rank = 0
    # Whether process_dataloader may put a DistributedSampler in (Trainer(use_distributed_sampler=...)).
    use_distributed_sampler = True
    # True when ``step("training", ...)`` also runs the backward (a pipeline schedule does both): the
    # Trainer then zeroes gradients before the step and does not call ``backward`` itself.
    owns_backward = False

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    def barrier(self, name: str = "") -> None:
        """Wait until every process gets here."""

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """``obj`` from process ``src`` on every process."""
        return obj

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Stack ``tensor`` from every process along a new first dimension."""
        return tensor.unsqueeze(0)

    def all_gather_object(self, obj: Any) -> list:
        """``obj`` (picklable) from every process, as a list indexed by rank."""
        return [obj]

    def reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        """Reduce ``tensor`` across processes with ``op`` ("mean", "sum", "max", "min")."""
        return tensor

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        """The same decision on every process: ``all`` → True only if every process says True."""
        return decision

    # ------------------------------------------------------------------ data
    def process_dataloader(self, loader, stage: str):
        """The loader this process iterates (distributed strategies give each process its share)."""
        return loader

    def gather_predictions(self, outputs: list, loader) -> list:
        """The predictions of every process for ``loader``, in dataset order (here: this process's own)."""
        return outputs

    def batch_to_device(self, batch, module, dataloader_idx: int = 0):
        return module.transfer_batch_to_device(batch, self.root_device, dataloader_idx)

    # ------------------------------------------------------------------ the step
    def step(self, stage: str, *args) -> Any:
        """Run the module's ``{stage}_step(*args)`` (stage: training, validation, test, predict) under the
        precision's autocast, through the wrapper that distributed strategies need for their hooks."""
        with self.precision.autocast():
            return getattr(self.module, _STEP_HOOKS[stage])(*args)

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        if self.direct_backward:
            loss.backward(*args, **kwargs)
        else:
            self.precision.backward(loss, *args, module=self.module, **kwargs)

    def evaluation_context(self, inference_mode: bool):
        """What validate / test / predict (and the sanity check) run under: ``torch.inference_mode`` when
        the Trainer's ``inference_mode=True`` (the default), else ``torch.no_grad``."""
        return torch.inference_mode() if inference_mode else torch.no_grad()

    def no_backward_sync(self, active: bool):
        """Context under which backward does not synchronise gradients (accumulation micro-batches)."""
        return _NOTHING

    def collective(self, what: str):
        """Context naming the collectives run inside as ``what``, for the error a failing one raises
        (distributed strategies: :class:`~surge.strategies.collectives.NamedCollectives`). One process: nothing."""
        return _NOTHING

    def optimizer_step(self, optimizer, closure=None, **kwargs) -> bool:
        """Step ``optimizer`` through the precision; ``kwargs`` go on to the optimizer's own ``step``."""
        return self.precision.optimizer_step(optimizer, closure, **kwargs)

    def clip_gradients(self, optimizer, value: float, algorithm: str) -> None:
        self.precision.unscale(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if algorithm == "norm":
            torch.nn.utils.clip_grad_norm_(params, value)
        else:
            torch.nn.utils.clip_grad_value_(params, value)

    # ------------------------------------------------------------------ checkpoints
    def module_state_dict(self) -> dict:
        return self.module.state_dict()

    def load_module_state_dict(self, state_dict: dict, strict: bool = True, path: str = "") -> None:
        """Load a checkpoint's ``state_dict`` into the module (a pipeline stage loads its own part)."""
        from ..checkpoint import load_module_state

        load_module_state(self.module, state_dict, strict=strict, path=path)

    def load_optimizer_state_dict(self, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def optimizer_state_dict(self, optimizer) -> dict:
        return optimizer.state_dict()

    def save_checkpoint(self, checkpoint: dict, path: str) -> None:
        """Write ``checkpoint`` (from every rank's ``Trainer._checkpoint_dict``) to ``path``: here rank 0
        writes one file atomically. Sharded strategies write a directory from every rank."""
        if self.is_global_zero:
            from ..checkpoint import save_checkpoint

            save_checkpoint(checkpoint, path)

    def wait_for_checkpoint(self) -> None:
        """Block until the checkpoints this strategy started saving are complete on disk (a strategy that
        writes in the background; here saves are synchronous: nothing to wait for)."""

    def remove_checkpoint(self, path: str) -> None:
        """Delete the checkpoint at ``path`` (a file, or a sharded folder): rank 0 does it. A strategy that
        writes in the background deletes only once the save in flight is committed."""
        import os

        if self.is_global_zero and os.path.lexists(path):
            from ..checkpoint import remove_checkpoint_files

            remove_checkpoint_files(path)

    def load_checkpoint(self, path: str, optimizers=()) -> dict:
        """Read the checkpoint at ``path``: a file, or a sharded (DCP) directory, gathered whole here."""
        import os

        if os.path.isdir(path):
            from .fsdp_checkpoint import read_sharded_checkpoint

            return read_sharded_checkpoint(path)
        from ..checkpoint import load_checkpoint

        return load_checkpoint(path, map_location=self.root_device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.root_device})"


def strategy_names() -> list[str]:
    from . import ddp, fsdp, model_parallel, pipeline, single  # noqa: F401  (they register themselves)

    return sorted(_REGISTRY)


def get_strategy(value) -> Strategy:
    """A Strategy for a ``strategy=`` argument: a registered name, or a Strategy instance."""
    from ..utils import MisconfigurationError

    if isinstance(value, Strategy):
        return value
    names = strategy_names()
    if not isinstance(value, str) or value not in _REGISTRY:
        raise MisconfigurationError(f"strategy={value!r} is not known; choose one of {', '.join(names)} or pass a Strategy instance")
    return _REGISTRY[value]()
