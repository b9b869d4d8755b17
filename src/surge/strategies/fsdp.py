"""Fully sharded data parallel on PyTorch's ``fully_shard`` (FSDP2): each rank holds a 1/N shard.

Parameters, gradients and optimizer states are sharded across the ranks as DTensors. Before a wrapped
module's forward its parameters are all-gathered, after it they are freed again; gradients are
reduce-scattered. Everything else (processes, the launcher, collectives, samplers) is DDP's, so this
class only changes how the module is wrapped, how the step runs and how checkpoints are written.

Checkpoints are sharded by default: a *directory* written by every rank in parallel with
``torch.distributed.checkpoint`` (DCP), plus ``surge_meta.pt`` (trainer state, RNG, callbacks: small,
plain data, read with ``weights_only=True``). DCP reshards on load, so a checkpoint saved on 4 ranks
resumes on 2, on 1, or without FSDP at all. :func:`consolidate` turns one into a single file.
With ``async_save=True`` the shards are copied to CPU memory and written in a background thread while
training goes on (``fsdp_checkpoint.PendingSave``).
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from datetime import timedelta
from typing import Any, Callable, Optional, Union

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import CheckpointError, load_checkpoint, remove_checkpoint_files
from ..launch import find_free_port
from ..precision import MixedPrecision, agreeing_scaler
from ..utils import MisconfigurationError
from .ddp import DDP, _StepRouter
from .fsdp_checkpoint import (META_FILE, PendingSave, _optim_ids_to_names, _optim_names_to_ids,  # noqa: F401
                              _read_meta, commit_folder, consolidate, main, read_sharded_checkpoint)
from .fsdp_commit import agree_on_failure, save_sharded
from .mesh import device_mesh, once_per_group
from .strategy import register

STATE_DICT_TYPES = ("sharded", "full")


class _FSDPMixedPrecision(MixedPrecision):
    """``bf16-mixed`` / ``16-mixed`` under FSDP: no autocast; FSDP's MixedPrecisionPolicy casts the
    gathered parameters to bf16 / fp16 for compute while the sharded master weights, the gradients and
    their reduction stay float32. ``16-mixed`` keeps MixedPrecision's loss scaling, with torch's
    ShardedGradScaler: every rank sees inf/NaN in any rank's gradient shard, so all skip the same steps."""

    def __init__(self, device, dtype: torch.dtype) -> None:
        super().__init__(device, dtype)
        if self.scaler is not None:
            self.scaler = agreeing_scaler(device.type)

    def autocast(self):
        return contextlib.nullcontext()


@register("fsdp")
class FSDP(DDP):
    """Fully sharded data parallel over ``devices`` processes per machine on ``num_nodes`` machines.

    Example::

        trainer = surge.Trainer(strategy="fsdp", accelerator="cuda", devices=8, precision="bf16-mixed")
        trainer = surge.Trainer(strategy=FSDP(auto_wrap={Block}, activation_checkpointing={Block}), devices=8)

    Arguments:
        auto_wrap: which submodules become their own FSDP unit (one all-gather each): a set of module
            classes (e.g. each transformer block), a callable ``fn(module) -> bool``, or None: every
            direct child of the Module with more than ``min_wrap_params`` parameters. The Module
            itself is always the root unit and holds whatever is left.
        reshard_after_forward: free the gathered parameters after forward and gather them again in
            backward (less memory); False keeps them until backward (less communication).
        mixed_precision: a ``torch.distributed.fsdp.MixedPrecisionPolicy``; overrides what
            ``precision=`` maps to (``"bf16-mixed"`` / ``"16-mixed"``: bf16 / fp16 parameters, float32 reduction).
        cpu_offload: keep sharded parameters, gradients and optimizer states in CPU memory (GPU runs).
        activation_checkpointing: a set of module classes (or ``fn(module) -> bool``) whose
            activations are recomputed in backward instead of stored.
        state_dict_type: "sharded" (a DCP directory written by every rank) or "full" (gathered on
            rank 0 into one ordinary surge checkpoint file).
        async_save: write sharded checkpoints in a background thread (``dcp.async_save``): a save
            costs training only the copy of this rank's shards to CPU memory. The next save, the end
            of the stage (fit, test, ...) and an exception wait for it; a checkpoint appears under its
            name only once every rank has written it. Needs ``state_dict_type="sharded"``.
        hsdp: ``(replicate, shard)``: shard within groups of ``shard`` ranks and replicate across
            ``replicate`` groups (usually shard = GPUs per node); replicate * shard = world size.
        min_wrap_params: the size above which the default policy wraps a child.
        timeout, process_group_backend: as for :class:`DDP`.
    """

    name = "fsdp"
    manual_optimization_unsupported = (
        "the root FSDP unit wraps training_step, so a manual_backward inside it would leave that unit's "
        "gradients unreduced and the optimizer would step on the wrong ones")

    def __init__(self, auto_wrap: Union[None, set, list, tuple, Callable[[nn.Module], bool]] = None,
                 reshard_after_forward: bool = True, mixed_precision=None, cpu_offload: bool = False,
                 activation_checkpointing: Union[None, set, list, tuple, Callable[[nn.Module], bool]] = None,
                 state_dict_type: str = "sharded", async_save: bool = False, hsdp: Optional[tuple] = None,
                 min_wrap_params: int = 100_000,
                 timeout: timedelta = timedelta(minutes=30), process_group_backend: Optional[str] = None) -> None:
        super().__init__(timeout=timeout, process_group_backend=process_group_backend)
        from torch.distributed.fsdp import MixedPrecisionPolicy

        self.auto_wrap = _check_policy("auto_wrap", auto_wrap)
        self.activation_checkpointing = _check_policy("activation_checkpointing", activation_checkpointing)
        if not isinstance(reshard_after_forward, bool):
            raise MisconfigurationError(f"FSDP(reshard_after_forward={reshard_after_forward!r}) must be True or False")
        if mixed_precision is not None and not isinstance(mixed_precision, MixedPrecisionPolicy):
            raise MisconfigurationError(f"FSDP(mixed_precision=...) must be a torch.distributed.fsdp.MixedPrecisionPolicy "
                                        f"or None, got {type(mixed_precision).__name__}")
        if state_dict_type not in STATE_DICT_TYPES:
            raise MisconfigurationError(f"FSDP(state_dict_type={state_dict_type!r}): choose 'sharded' or 'full'")
        if not isinstance(async_save, bool):
            raise MisconfigurationError(f"FSDP(async_save={async_save!r}) must be True or False")
        if async_save and state_dict_type != "sharded":
            raise MisconfigurationError(f"FSDP(async_save=True) writes sharded checkpoints in the background; it needs "
                                        f"state_dict_type='sharded', got state_dict_type={state_dict_type!r}")
        if hsdp is not None and not (isinstance(hsdp, (tuple, list)) and len(hsdp) == 2
                                     and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in hsdp)):
            raise MisconfigurationError(f"FSDP(hsdp={hsdp!r}) must be None or (replicate, shard), two ints >= 1")
        if isinstance(min_wrap_params, bool) or not isinstance(min_wrap_params, int) or min_wrap_params < 0:
            raise MisconfigurationError(f"FSDP(min_wrap_params={min_wrap_params!r}) must be an int >= 0")
        self.reshard_after_forward = reshard_after_forward
        self.mixed_precision = mixed_precision
        self.cpu_offload = bool(cpu_offload)
        self.state_dict_type = state_dict_type
        self.async_save = async_save
        self._ckpt_group = None  # async_save: the background writes' own gloo group (see setup_environment)
        self._pending: Optional[PendingSave] = None
        self._in_stage = False  # between setup_module and teardown: a later call will wait for an async save
        self.hsdp = tuple(hsdp) if hsdp is not None else None
        self.min_wrap_params = min_wrap_params
        self.mesh = None
        self._sharded: Optional[nn.Module] = None  # the module already sharded (fit then test reuse it)
        self._router: Optional[nn.Module] = None

    # ------------------------------------------------------------------ set-up
    def configure(self, accelerator, device_ids, num_nodes, precision) -> None:
        super().configure(accelerator, device_ids, num_nodes, precision)
        if self.hsdp is not None and self.hsdp[0] * self.hsdp[1] != self.world_size:
            raise MisconfigurationError(
                f"FSDP(hsdp={self.hsdp}) needs replicate * shard = {self.hsdp[0] * self.hsdp[1]} processes, but the run "
                f"has {self.world_size} (devices={len(device_ids)} x num_nodes={num_nodes})")
        if self.cpu_offload and self.root_device.type == "cpu":
            raise MisconfigurationError("FSDP(cpu_offload=True) moves GPU memory to the CPU; with accelerator='cpu' "
                                        "everything is in CPU memory already: remove cpu_offload")
        if isinstance(self.precision, MixedPrecision):  # "bf16-mixed", "16-mixed"
            # FSDP casts the gathered parameters itself, so no autocast: see _FSDPMixedPrecision.
            self.precision = _FSDPMixedPrecision(self.root_device, self.precision.dtype)

    def setup_environment(self) -> None:
        # One process still needs a (world size 1) process group for DTensor: give it a port.
        if not dist.is_initialized() and self.world_size == 1 and "MASTER_PORT" not in os.environ \
                and self.cluster.main_port is None:
            self.cluster.main_port = find_free_port()
        super().setup_environment()
        if self.mesh is None:
            shape, names = (self.hsdp, ("replicate", "shard")) if self.hsdp else ((self.world_size,), ("shard",))
            self.mesh = device_mesh(self.root_device.type, shape, names)  # shared by this process's Trainers
        if self.async_save and self._ckpt_group is None:
            # The background thread's collectives (DCP plans and results) must not interleave with the
            # training's all-gathers on the default group, and async_save needs a CPU backend even when
            # training runs on NCCL: a group of its own, on gloo.
            self._ckpt_group = once_per_group(("checkpoint", "gloo", self.timeout),
                                              lambda: dist.new_group(backend="gloo", timeout=self.timeout))

    def _fsdp_kwargs(self, root: bool = False) -> dict:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

        policy = self.mixed_precision
        if policy is None and isinstance(self.precision, _FSDPMixedPrecision):
            # The root unit's output is the step's output (the loss): in float32, as autocast gives it,
            # so that the grad scaler's 2**16 times the loss does not overflow float16 before backward.
            policy = MixedPrecisionPolicy(param_dtype=self.precision.dtype, reduce_dtype=torch.float32,
                                          output_dtype=torch.float32 if root else None)
        kwargs = {"mesh": self.mesh, "reshard_after_forward": self.reshard_after_forward}
        if policy is not None:
            kwargs["mp_policy"] = policy
        if self.cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        return kwargs

    def _wrap_targets(self, module: nn.Module) -> list[nn.Module]:
        """The submodules that become FSDP units, deepest first (fully_shard goes bottom-up)."""
        if self.auto_wrap is None:
            return [child for child in module.children()
                    if sum(p.numel() for p in child.parameters()) > self.min_wrap_params]
        # named_modules is pre-order: reversed, every child comes before its parent.
        return [m for _, m in reversed(list(module.named_modules())) if m is not module and _matches(self.auto_wrap, m)]

    def setup_module(self, module: nn.Module) -> None:
        self._in_stage = True
        if self._sharded is module:  # a later stage (test after fit): the module is sharded already
            self.module, self.model = module, self._router
            return
        from torch.distributed.fsdp import fully_shard

        module = self.precision.convert_module(module)  # "bf16-true": shard bf16 parameters
        on_meta = any(t.is_meta for t in (*module.parameters(), *module.buffers()))
        if not on_meta:
            module.to(self.root_device)
        self.module = module
        if self.activation_checkpointing is not None:
            from torch.distributed._composable import checkpoint

            # The composable checkpoint keeps parameter names (no wrapper module in the path).
            for m in [m for m in module.modules() if m is not module and _matches(self.activation_checkpointing, m)]:
                checkpoint(m)
        kwargs = self._fsdp_kwargs()
        for target in self._wrap_targets(module):
            fully_shard(target, **kwargs)
        # The root unit is a router whose forward runs <stage>_step, so the Module's own parameters
        # (those outside every wrapped child) are gathered for the whole step, whatever it calls.
        router = fully_shard(_StepRouter(module), **self._fsdp_kwargs(root=True))
        if on_meta:
            # configure_model built the model on the meta device: allocate only this rank's shards,
            # then let each submodule initialise itself.
            router.to_empty(device=self.root_device)
            with torch.no_grad():
                for m in module.modules():
                    if callable(getattr(m, "reset_parameters", None)):
                        m.reset_parameters()
        self._sharded, self._router = module, router
        self.model = router

    # ------------------------------------------------------------------ the step
    def step(self, stage: str, *args) -> Any:
        with self.precision.autocast():
            output = self.model(stage, *args)
        if stage != "training" and not self.reshard_after_forward:
            # Without a backward nothing would free the gathered parameters: do it now, so that
            # the module holds its shards again (for a checkpoint, or the next training step).
            for m in self.model.modules():
                if hasattr(m, "reshard"):
                    m.reshard()
        return output

    def evaluation_context(self, inference_mode: bool):
        # Never inference_mode: the parameters FSDP gathers for an evaluation forward would be inference
        # tensors, which FSDP's own bookkeeping (version counters) and the next training step cannot use.
        return torch.no_grad()

    @contextlib.contextmanager
    def no_backward_sync(self, active: bool):
        """On the micro-batches before the last of an accumulation window: no reduce-scatter, and the
        gathered parameters stay gathered (no all-gather again in the next forward). More memory,
        less communication; the last micro-batch reduces the summed gradients once. The epoch's last
        batch of uneven data (``final_batch_out``) synchronises even inside a window."""
        model = self.model
        if not active or self.final_batch_out or not hasattr(model, "set_requires_gradient_sync"):
            yield
            return
        model.set_requires_gradient_sync(False)
        model.set_reshard_after_backward(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
            model.set_reshard_after_backward(True)

    def clip_gradients(self, optimizer, value: float, algorithm: str) -> None:
        """Clip by the global norm over all shards (DTensor gradients: torch reduces the shards' norms
        across ranks), or elementwise by value (each rank clips its own shard)."""
        self.precision.unscale(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if algorithm == "norm":
            norm = torch.nn.utils.clip_grad_norm_(params, value)
            # a DTensor: keep the full value (e.g. for logging) without a host sync
            self.last_grad_norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        else:
            torch.nn.utils.clip_grad_value_(params, value)

    # ------------------------------------------------------------------ checkpoints
    def _options(self, full: bool, **extra):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=full, cpu_offload=full, **extra)

    def module_state_dict(self) -> dict:
        """Sharded: this rank's DTensor shards. Full: the whole state on rank 0 (``{}`` elsewhere).
        A collective: every rank calls it."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.module, options=self._options(self.state_dict_type == "full"))

    def optimizer_state_dict(self, optimizer) -> dict:
        """Keyed by parameter name when sharded; in plain ``optimizer.state_dict()`` form when full."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        full = self.state_dict_type == "full"
        state = get_optimizer_state_dict(self.module, optimizer, options=self._options(full))
        return _optim_names_to_ids(state) if full and state else state

    def save_checkpoint(self, checkpoint: dict, path: str) -> None:
        """Full: rank 0 writes one file. Sharded: every rank writes its shards into a new directory
        ``.NAME.tmp``, rank 0 adds ``surge_meta.pt`` and swaps the directory in for ``path`` when all are
        done, so a crash leaves the old checkpoint or the new one, never a mix (one left aside by a crash
        mid-swap is put back at the next start: :mod:`.fsdp_commit`). With ``async_save`` inside a stage
        the shards are written in the background and the swap happens when they are all on disk; a
        save outside a stage (``trainer.save_checkpoint`` after fit) is synchronous: nothing would wait.
        A failed write (disk full) removes the new directory and raises ``CheckpointWriteError``, naming
        the file and the OS error, on every rank."""
        if self.state_dict_type == "full":
            return super().save_checkpoint(checkpoint, path)
        self.wait_for_checkpoint()  # one save at a time (its staging copy is freed), committed before the next
        self._pending = save_sharded(self, checkpoint, os.path.abspath(path),
                                     self._ckpt_group if self.async_save and self._in_stage else None)

    def wait_for_checkpoint(self, collective: bool = True) -> None:
        """Wait until the asynchronous save in flight (if any) is written and committed; raise its error.
        ``collective``: then meet the other ranks, so that the checkpoint is complete for all of them (and
        all raise if the save failed on any: rank 0's commit can fail alone).
        (The Trainer calls it before a preemption exit: the job may be killed once it is requeued.)"""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if not collective:
            pending.wait(timeout=self.timeout.total_seconds())
            return
        failure = None
        try:
            pending.wait(timeout=self.timeout.total_seconds())
        except CheckpointError as err:
            failure = err
        agree_on_failure(self, failure, f"finish the asynchronous save of checkpoint {pending.path!r}")

    def remove_checkpoint(self, path: str) -> None:
        """Delete a checkpoint (ModelCheckpoint's stale top-k): with a save in flight, only once that save
        is committed, so a crash meanwhile still leaves the older checkpoint."""
        if self.is_global_zero and not (self._pending is not None and self._pending.remove_after(path)):
            remove_checkpoint_files(path)

    def load_checkpoint(self, path: str, optimizers=()) -> dict:
        """A sharded directory loads straight into this rank's shards (resharded by DCP if the world
        size changed); a file is an ordinary full checkpoint."""
        self.wait_for_checkpoint()
        if not os.path.isdir(path):
            return load_checkpoint(path, map_location="cpu")
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        from .dcp_safety import SafeReader, unwrap_dcp_error

        # Every rank reads and checks surge_meta.pt and .metadata itself before any collective: a bad folder
        # is the same CheckpointError on every rank, and nothing in it is unpickled unchecked.
        ckpt = _read_meta(path)
        count = ckpt.pop("sharded").get("optimizers")
        reader = SafeReader(path)
        wanted = {"state_dict": get_model_state_dict(self.module)}
        load_optim = count is not None and count == len(optimizers) and count > 0
        if load_optim:
            wanted["optimizer_states"] = {str(i): get_optimizer_state_dict(self.module, o) for i, o in enumerate(optimizers)}
        try:
            dcp.load(wanted, storage_reader=reader)
        except (Exception, CheckpointException) as err:  # noqa: BLE001  (DCP gathers every rank's failure)
            raise unwrap_dcp_error(err, path) from err
        ckpt["state_dict"] = wanted["state_dict"]
        if count is not None:  # a count that does not match: the Trainer names the mismatch
            ckpt["optimizer_states"] = [wanted["optimizer_states"][str(i)] for i in range(count)] if load_optim \
                else [{}] * count
        return ckpt

    def load_module_state_dict(self, state_dict: dict, strict: bool = True, path: str = "") -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict
        from torch.distributed.tensor import DTensor

        own = set(self.module.state_dict())
        missing, unexpected = sorted(own - set(state_dict)), sorted(set(state_dict) - own)
        if strict and (missing or unexpected):
            raise CheckpointError(f"checkpoint {str(path)!r} does not fit {type(self.module).__name__}: missing keys "
                                  f"{missing[:20]}, unexpected keys {unexpected[:20]}")
        full = not any(isinstance(v, DTensor) for v in state_dict.values())
        set_model_state_dict(self.module, state_dict, options=self._options(full, strict=strict))

    def load_optimizer_state_dict(self, optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        full = any(isinstance(k, int) for k in state.get("state", {})) or any(
            isinstance(p, int) for g in state.get("param_groups", []) for p in g["params"])
        if full:
            names = {id(p): n for n, p in self.module.named_parameters()}
            order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
            state = _optim_ids_to_names(state, order)
        set_optimizer_state_dict(self.module, optimizer, state, options=self._options(full))

    def teardown(self) -> None:
        """End of a stage: wait for the asynchronous save in flight. While an exception unwinds, the
        other ranks may be gone: wait for this rank's own write only, and report its failure as a warning
        (the exception that stopped the run is the one the user must see)."""
        self._in_stage = False
        self.model = None
        if sys.exc_info()[1] is None:
            self.wait_for_checkpoint()
            return
        try:
            self.wait_for_checkpoint(collective=False)
        except Exception as err:  # noqa: BLE001
            warnings.warn(f"while the run stopped on an exception: {err}", stacklevel=2)

    def __repr__(self) -> str:
        return f"FSDP(rank={self.global_rank}/{self.world_size}, device={self.root_device}, mesh={self.hsdp or self.world_size})"


# ====================================================================== helpers
def _check_policy(name: str, value):
    if value is None or callable(value) and not isinstance(value, type):
        return value
    if isinstance(value, type):
        value = {value}
    if isinstance(value, (set, frozenset, list, tuple)) and value and all(
            isinstance(c, type) and issubclass(c, nn.Module) for c in value):
        return tuple(value)
    raise MisconfigurationError(f"FSDP({name}={value!r}) must be None, a set of nn.Module classes, or a callable "
                                f"fn(module) -> bool")


def _matches(policy, module: nn.Module) -> bool:
    return isinstance(module, policy) if isinstance(policy, tuple) else bool(policy(module))
