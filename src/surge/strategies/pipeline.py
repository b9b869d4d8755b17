"""Pipeline parallelism: the model's blocks split into stages, one process per stage, micro-batches
flowing through them on a schedule from ``torch.distributed.pipelining``.

Each process keeps only its stage's parameters (the user's module is trimmed in place, see
:mod:`surge.strategies.model_parallel`), so ``configure_optimizers``, schedulers, callbacks and
``state_dict`` keys stay as they are. A schedule runs forward *and* backward of all micro-batches at
once, so this strategy owns the backward (``owns_backward``): the Trainer zeroes gradients before the
step and does not call backward itself.

The user's steps run as they are, on the last stage, where ``self(...)`` returns that stage's output
(the whole model's output, since the last stage holds the head): ``training_step`` once per micro-batch
inside the schedule (its loss drives the schedule's backward), ``validation_step`` / ``test_step`` /
``predict_step`` once on the whole batch after a forward-only pass. So a step must compute the model's
output with exactly one call ``self(inputs)``. What those steps ``self.log`` is recorded on the last
stage (per batch: the micro-batches' values reduced by ``reduce_fx``), sent to every stage and logged
there, so rank 0 (the first stage, which writes loggers and the progress bar), ``ModelCheckpoint`` and
``EarlyStopping`` see the user's metrics on every rank (that machinery is in
:mod:`surge.strategies.pipeline_steps`). The first stage takes ``batch[0]`` (or the batch itself, if a
tensor); a module with another batch layout defines ``pipeline_inputs(batch) -> Tensor``.

With more processes than stages, ``Pipeline(stages=p)`` on ``p * d`` processes builds a DeviceMesh
``(dp=d, pp=p)``: each pipeline replica trains on its share of the data and the gradients are averaged
across replicas before the optimizer step. With ``data_parallel="fsdp"`` the replicas of a stage shard it
instead (``fully_shard`` over the ``dp`` sub-mesh, see :mod:`surge.strategies.pipeline_fsdp`).
"""
from __future__ import annotations

import contextlib
import inspect
import os
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

from ..precision import MixedPrecision, agreeing_scaler
from ..utils import MisconfigurationError
from .ddp import DDP
from .mesh import device_mesh, once_per_group
from .model_parallel import StageModule, find_body, keep_only, plan_split
from .pipeline_fsdp import (DATA_PARALLEL, full_optimizer_state, full_state, gradients_kept, like, local,
                            shard_optimizer_state, shard_stages)
from .pipeline_steps import FromLast, MicroStep, call_step, recording, replay_logs, split_batch
from .strategy import Strategy, register

# Our name -> (torch class, holds several stages per rank, how stages map onto ranks).
_SCHEDULES = {
    "GPipe": ("ScheduleGPipe", False, "loop"),
    "1F1B": ("Schedule1F1B", False, "loop"),
    "Interleaved1F1B": ("ScheduleInterleaved1F1B", True, "loop"),
    "LoopedBFS": ("ScheduleLoopedBFS", True, "loop"),
    "InterleavedZeroBubble": ("ScheduleInterleavedZeroBubble", True, "loop"),
    "ZBVZeroBubble": ("ScheduleZBVZeroBubble", True, "v"),
}


def _pipelining():
    # Imported when a pipeline is built, not with the strategy registry: torch.distributed.pipelining
    # imports torch._dynamo (about 1 s), which every Trainer() would otherwise pay.
    from torch.distributed import pipelining

    return pipelining


def schedule_names() -> list[str]:
    """The schedules this torch provides."""
    return [name for name, (cls, _, _) in _SCHEDULES.items() if hasattr(_pipelining(), cls)]


@register("pipeline")
class Pipeline(DDP):
    """Pipeline-parallel training over ``devices`` processes (x ``num_nodes``).

    Example::

        trainer = surge.Trainer(strategy="pipeline", accelerator="cpu", devices=2)
        trainer = surge.Trainer(strategy=Pipeline(stages=2, schedule="GPipe", microbatches=8), devices=4)  # 2 x 2

    Arguments:
        stages: pipeline stages (processes per pipeline); default: every process. ``world_size / stages``
            pipelines train side by side as data-parallel replicas.
        split_points: names of the blocks where stages start (``["blocks.6"]``); default: balanced by
            parameter count. ``stages * virtual_stages - 1`` names.
        schedule: "GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble", "ZBVZeroBubble"
            (those the installed torch has; see :func:`schedule_names`).
        microbatches: micro-batches per batch; the batch size must be a multiple of it.
        virtual_stages: stages per process (Interleaved1F1B and the zero-bubble schedules; 2 for ZBV).
        data_parallel: how the replicas of a stage (``world_size / stages`` > 1) share it: "replicate" (each
            holds the whole stage; gradients all-reduced) or "fsdp" (each holds 1/dp of the stage's
            parameters, gradients and optimizer state; ``fully_shard`` over the ``dp`` mesh dimension).
        timeout, process_group_backend: as for :class:`~surge.strategies.ddp.DDP`.
    """

    name = "pipeline"
    owns_backward = True
    manual_optimization_unsupported = "it runs the backward inside its schedule"

    def __init__(self, stages: Optional[int] = None, split_points: Optional[list] = None, schedule: str = "1F1B",
                 microbatches: int = 4, virtual_stages: int = 1, data_parallel: str = "replicate",
                 timeout: timedelta = timedelta(minutes=30), process_group_backend: Optional[str] = None) -> None:
        super().__init__(timeout=timeout, process_group_backend=process_group_backend)
        available = schedule_names()
        if schedule not in available:
            raise MisconfigurationError(f"Pipeline(schedule={schedule!r}) is not known; this torch has {', '.join(available)}")
        for arg, value in (("microbatches", microbatches), ("virtual_stages", virtual_stages)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MisconfigurationError(f"Pipeline({arg}=...) must be an int >= 1, got {value!r}")
        if stages is not None and (isinstance(stages, bool) or not isinstance(stages, int) or stages < 1):
            raise MisconfigurationError(f"Pipeline(stages=...) must be an int >= 1 or None, got {stages!r}")
        _, multi, style = _SCHEDULES[schedule]
        if not multi and virtual_stages != 1:
            raise MisconfigurationError(f"schedule={schedule!r} runs one stage per process; for virtual_stages="
                                        f"{virtual_stages} choose Interleaved1F1B or a zero-bubble schedule")
        if style == "v" and virtual_stages != 2:
            raise MisconfigurationError(f"schedule={schedule!r} needs virtual_stages=2, got {virtual_stages}")
        if split_points is not None and not (isinstance(split_points, (list, tuple))
                                             and all(isinstance(s, str) for s in split_points)):
            raise MisconfigurationError(f"Pipeline(split_points=...) must be a list of block names, got {split_points!r}")
        if data_parallel not in DATA_PARALLEL:
            raise MisconfigurationError(f"Pipeline(data_parallel={data_parallel!r}) is not known; choose "
                                        f"{' or '.join(map(repr, DATA_PARALLEL))}")
        self.stages, self.split_points, self.schedule = stages, split_points, schedule
        self.data_parallel = data_parallel
        self.microbatches, self.virtual_stages = microbatches, virtual_stages
        self.pp, self.dp, self.pp_rank, self.dp_rank = 1, 1, 0, 0
        self.mesh = self.pp_group = self.dp_group = None
        self._split_of: Optional[torch.nn.Module] = None
        self._schedules: dict = {}
        self._sync = True
        self._micro: Optional[MicroStep] = None  # the training batch now in the schedule
        self._from_last_channel = FromLast()
        self._from_last_group = None  # gloo: the group FromLast uses, posted before each step (else pp_group)

    # ------------------------------------------------------------------ set-up
    def configure(self, accelerator, device_ids, num_nodes, precision) -> None:
        super().configure(accelerator, device_ids, num_nodes, precision)
        self.pp = self.stages or self.world_size
        if self.world_size % self.pp:
            raise MisconfigurationError(f"Pipeline(stages={self.pp}) does not divide the {self.world_size} processes "
                                        f"(devices x num_nodes) into pipeline replicas")
        self.dp = self.world_size // self.pp
        if isinstance(self.precision, MixedPrecision) and self.precision.scaler is not None:  # "16-mixed"
            # The stages hold different gradients: an inf on one stage must skip the step on all of them.
            self.precision.scaler = agreeing_scaler(self.root_device.type)

    def setup_environment(self) -> None:
        if self.world_size == 1 and "MASTER_PORT" not in os.environ and not dist.is_initialized():
            from ..launch import find_free_port

            os.environ["MASTER_PORT"] = str(find_free_port())  # a one-stage pipeline still needs a group
        super().setup_environment()
        if self.mesh is None:
            self.mesh = device_mesh(self.root_device.type, (self.dp, self.pp), ("dp", "pp"))  # shared by this process's Trainers
            self.pp_group, self.dp_group = self.mesh.get_group("pp"), self.mesh.get_group("dp")
            self.pp_rank, self.dp_rank = self.mesh.get_local_rank("pp"), self.mesh.get_local_rank("dp")
        if self.pp > 1 and self._from_last_group is None and dist.get_backend(self.pp_group) == "gloo":
            # What the last stage leaves travels on a group of its own, so the other stages can post its
            # receive before the step (FromLast.post) without meeting the schedule's send/recv. (Under NCCL
            # a receive posted early would hold a kernel on the device for the whole step: not done there.)
            rows = tuple(tuple(row) for row in self.mesh.mesh.tolist())  # each replica's pipeline, by global rank
            groups = once_per_group(("from_last", rows, self.timeout), lambda: [
                dist.new_group(list(row), backend="gloo", timeout=self.timeout) for row in rows])  # every rank, every row
            self._from_last_group = groups[self.dp_rank]

    def setup_module(self, module: torch.nn.Module) -> None:
        if self._split_of is module:  # fit() then test(): the module is already this rank's stage
            Strategy.setup_module(self, module)
            return
        from torch.distributed.pipelining._utils import generate_stage_to_rank_mapping

        body = find_body(module)
        total = self.pp * self.virtual_stages
        ranges = plan_split(body, total, self.split_points)
        mapping = generate_stage_to_rank_mapping(self.pp, total, style=_SCHEDULES[self.schedule][2])
        self._local = [s for s in range(total) if mapping[s] == self.pp_rank]
        self._stage_modules = [StageModule(body, *ranges[s], s == 0, s == total - 1) for s in self._local]
        self._total, self._ranges = total, ranges
        self._first_src = dist.get_global_rank(self.pp_group, mapping[0])
        self._last_src = dist.get_global_rank(self.pp_group, mapping[total - 1])
        keep_only(body, ranges, self._local)  # before the move: the other stages never reach the device
        Strategy.setup_module(self, module)
        if self.data_parallel == "fsdp":  # after the move: each rank keeps its shards on its device
            shard_stages(self._stage_modules, self.mesh["dp"])
        self._split_of = module
        self._schedules.clear()
        scaler = getattr(self.precision, "scaler", None)
        if scaler is not None:
            # Only the last stage scales a loss, which is when a scaler makes its scale tensor; every
            # stage unscales and steps, so each needs that tensor from the start.
            scaler.scale(torch.ones((), device=self.root_device))

    def compile_module(self, options: dict) -> None:
        """Under a pipeline ``self(x)`` only hands back the last stage's output, and the schedule runs this
        rank's stage modules: compile each of their blocks in place (one graph per block, as torchtitan
        does), and the embedding and head modules around them."""
        from ..compile import compile_module

        for stage in self._stage_modules:
            for part in (*stage.pre, *stage.body, *stage.post):
                compile_module(part, options)

    @property
    def is_first(self) -> bool:
        return 0 in self._local

    @property
    def is_last(self) -> bool:
        return self._total - 1 in self._local

    # ------------------------------------------------------------------ the step
    def step(self, stage: str, batch, batch_idx: int = 0, *extra) -> Any:
        """One batch through the schedule. The user's ``{stage}_step`` runs on the last stage with ``self(...)``
        answering that stage's output: once per micro-batch in training (its loss drives the schedule's
        backward), once on the whole batch in evaluation and prediction. What the step logs and returns is
        then sent from the last stage to every stage of the pipeline."""
        training = stage == "training"
        if not training and _SCHEDULES[self.schedule][2] == "v":
            # torch's V schedules hand activations between the two stages of a process through their
            # backward buffers, also in eval(), which then fails on an assertion (seen with torch 2.13).
            raise MisconfigurationError(
                f"Pipeline(schedule={self.schedule!r}) cannot run {stage} (or the sanity check): torch "
                f"{torch.__version__}'s forward-only eval() of this schedule fails. Train with it without a "
                f"validation loader (or num_sanity_val_steps=0, limit_val_batches=0), then validate, test or "
                f"predict with another schedule: the checkpoint loads into any pipeline layout")
        inputs = self._inputs_of(batch)
        size = inputs.shape[0]
        if size % self.microbatches:
            raise MisconfigurationError(f"a batch of {size} samples does not split into Pipeline(microbatches="
                                        f"{self.microbatches}); make the batch size a multiple of it (drop_last=True "
                                        f"on the DataLoader avoids a short last batch)")
        schedule, step_kwargs = self._schedule(training, inputs)
        args = (inputs,) if self.is_first else ()
        payload = None
        posted = None
        if self._from_last_group is not None and not self.is_last:
            posted = self._from_last_channel.post(self._last_src, self._from_last_group, self._collective_device())
        # (fsdp: a new schedule's first step drops the gradients; those of an accumulation window are kept)
        with self.precision.autocast(), gradients_kept(self.module, self.data_parallel == "fsdp"):
            if training:
                micro = split_batch(batch, size, self.microbatches) if self.is_last else []
                self._micro = MicroStep(micro, batch_idx, extra, schedule)
                if self.is_last:  # the target of micro-batch i is i: the loss knows which micro-batch it is on
                    # (on the CPU whatever the device: reading it back then never waits for the GPU)
                    step_kwargs = dict(step_kwargs, target=torch.arange(self.microbatches))
                try:
                    schedule.step(*args, **step_kwargs)
                finally:
                    micro, self._micro = self._micro, None
                if self.is_last:
                    payload = micro.summary(self.microbatches)
            else:
                output = schedule.eval(*args)
                if self.is_last:
                    logs: list = []
                    with recording(self.module, logs):
                        payload = call_step(self.module, stage, output, batch, batch_idx, extra), logs
        result, logs = self._from_last(payload, posted)
        if training and self._sync and self.dp > 1 and self.data_parallel == "replicate":
            self._average_gradients()  # (fsdp: the schedule's last backward reduce-scattered them)
        device = self._collective_device() if self.dp > 1 else None  # only a sync across replicas needs one
        replay_logs(self.module, logs, self.dp, self.dp_group, device)
        return result

    def evaluation_context(self, inference_mode: bool):
        if self.data_parallel == "fsdp":  # as under strategy="fsdp": FSDP cannot gather into inference tensors
            return torch.no_grad()
        return super().evaluation_context(inference_mode)

    def _inputs_of(self, batch) -> torch.Tensor:
        """What the first stage takes: ``pipeline_inputs(batch)`` if the module defines it, else ``batch[0]``
        of a tuple or list, or the batch itself."""
        hook = getattr(self.module, "pipeline_inputs", None)
        if hook is not None:
            inputs = hook(batch)
        elif isinstance(batch, torch.Tensor):
            inputs = batch
        elif isinstance(batch, (tuple, list)) and batch:
            inputs = batch[0]
        else:
            inputs = None
        if not isinstance(inputs, torch.Tensor) or inputs.dim() == 0:
            name = type(self.module).__name__
            got = "pipeline_inputs(batch)" if hook is not None else f"batch[0] of this {type(batch).__name__}"
            raise MisconfigurationError(
                f"strategy='pipeline' feeds the first stage with the batch's inputs, a tensor whose first dimension "
                f"is the batch: batch[0] of a tuple or list, or the batch itself; {got} is "
                f"{type(inputs).__name__ if not isinstance(inputs, torch.Tensor) else 'a 0-d tensor'}. Define "
                f"{name}.pipeline_inputs(self, batch) returning the tensor that self(...) takes "
                f"(e.g. batch['input_ids'])")
        return inputs

    def _micro_loss(self, output, target):
        """The schedule's ``loss_fn`` (last stage, training): ``training_step`` on micro-batch ``target``."""
        # The schedule sums the micro-batches' gradients (scale_grads=False): divide here, by the
        # accumulation window too, so the gradients are those of the window's mean loss.
        accumulate = getattr(self.module.trainer, "accumulate_grad_batches", 1) or 1
        loss = self._micro.loss(self.module, output, target, self.microbatches * accumulate)
        scaler = getattr(self.precision, "scaler", None)  # "16-mixed": the backward runs on the scaled loss
        return loss if scaler is None else scaler.scale(loss)

    def _from_last(self, payload, posted=None):
        """``payload`` (the step's result and its logs) from the last stage, on every stage of the pipeline;
        ``posted``: the receive this stage posted before the step."""
        if self.pp == 1:
            return payload
        p2p = self._from_last_group is not None
        return self._from_last_channel.send(payload, self.is_last, self._last_src,
                                            self._from_last_group if p2p else self.pp_group,
                                            self._collective_device(), self.root_device, posted, p2p=p2p)

    def _schedule(self, training: bool, inputs: torch.Tensor):
        """A schedule (and its PipelineStages) per mode and batch shape: torch's stages size their
        communication buffers on their first batch, so a differently shaped batch needs its own."""
        key = (training, tuple(inputs.shape), inputs.dtype, torch.is_inference_mode_enabled())
        if key not in self._schedules:
            stages = [_pipelining().PipelineStage(m, s, self._total, self.root_device, group=self.pp_group)
                      for s, m in zip(self._local, self._stage_modules)]
            cls_name, multi, _ = _SCHEDULES[self.schedule]
            cls = getattr(_pipelining(), cls_name)
            schedule = cls(stages if multi else stages[0], n_microbatches=self.microbatches,
                           loss_fn=self._micro_loss if training else None, scale_grads=False)
            # Training needs no merged output (the loss is taken per micro-batch): skip the concatenation.
            takes = inspect.signature(schedule.step).parameters
            step_kwargs = {"return_outputs": False} if "return_outputs" in takes else {}
            self._schedules[key] = schedule, step_kwargs
        return self._schedules[key]

    def no_backward_sync(self, active: bool):
        # fsdp: torch's schedule reduce-scatters at the end of every batch whatever this says; FSDP adds
        # the reduced shards of the window's batches up, so accumulation is right, only not cheaper.
        @contextlib.contextmanager
        def window():
            self._sync = not active
            try:
                yield
            finally:
                self._sync = True

        return window()

    def _average_gradients(self) -> None:
        """Average the gradients across the data-parallel replicas of this stage (one flat all-reduce)."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, group=self.dp_group)
        flat /= self.dp
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    def backward(self, loss, *args, **kwargs) -> None:
        raise RuntimeError("strategy='pipeline' runs backward inside its schedule; manual_backward is not supported")

    def clip_gradients(self, optimizer, value: float, algorithm: str) -> None:
        """Clip by value locally, or by the global norm over every stage (sum of squares all-reduced):
        over the pipeline's stages when replicas hold the same (averaged) gradients, over every rank when
        each replica holds a shard of them (fsdp: every element lives on exactly one rank of its stage)."""
        self.precision.unscale(optimizer)
        grads = [local(p.grad).detach() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if algorithm != "norm":
            for grad in grads:
                grad.clamp_(-value, value)
            return
        squares = torch.zeros((), device=self.root_device, dtype=torch.float32)
        for grad in grads:
            squares += grad.float().pow(2).sum()
        dist.all_reduce(squares, group=self.pp_group if self.data_parallel == "replicate" else None)
        coef = torch.clamp(value / (squares.sqrt() + 1e-6), max=1.0)
        for grad in grads:
            grad.mul_(coef.to(grad.dtype))

    # ------------------------------------------------------------------ data
    def process_dataloader(self, loader, stage: str):
        """Every stage of a pipeline reads the same batches; replicas (dp > 1) read their own share."""
        from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler

        from ..data import rebuild_dataloader

        if self.dp == 1 or not self.use_distributed_sampler or not isinstance(loader, DataLoader) \
                or isinstance(loader.dataset, IterableDataset) or isinstance(loader.sampler, DistributedSampler):
            return loader
        shuffle = stage == "train" and isinstance(loader.sampler, RandomSampler)
        sampler = DistributedSampler(loader.dataset, num_replicas=self.dp, rank=self.dp_rank, shuffle=shuffle,
                                     seed=int(os.environ.get("SURGE_GLOBAL_SEED", 0)), drop_last=False)
        return rebuild_dataloader(loader, sampler=sampler)

    def gather_predictions(self, outputs: list, loader) -> list:
        return outputs  # every stage already holds the last stage's outputs for its replica's batches

    # ------------------------------------------------------------------ checkpoints
    def module_state_dict(self) -> dict:
        """The whole model's state dict on rank 0 (the stages of replica 0 merged; original key names;
        plain tensors: fsdp shards are gathered whole within each stage's dp group first)."""
        state = self.module.state_dict()
        if self.data_parallel == "fsdp":
            state = full_state(state)  # a collective: every rank of the dp group, the same keys in order
        own = {k: v.detach().cpu() for k, v in state.items()} if self.dp_rank == 0 else {}
        everyone = [None] * self.world_size if self.is_global_zero else None
        dist.gather_object(own, everyone, dst=0)
        if not self.is_global_zero:
            return own
        merged = {}
        for part in everyone:
            merged.update(part)
        return merged

    def optimizer_state_dict(self, optimizer) -> dict:
        """On rank 0: every stage's optimizer state, by pipeline rank (a resume needs the same stages)."""
        state = optimizer.state_dict()
        if self.data_parallel == "fsdp":
            state = full_optimizer_state(state)  # a collective, as in module_state_dict
        own = state if self.dp_rank == 0 else None
        everyone = [None] * self.world_size if self.is_global_zero else None
        dist.gather_object(own, everyone, dst=0)
        if not self.is_global_zero:
            return {}
        return {"pipeline_stages": [s for s in everyone if s is not None], "schedule_stages": self._total}

    def load_module_state_dict(self, state_dict: dict, strict: bool = True, path: str = "") -> None:
        """Load this stage's part of a full checkpoint (one saved by any number of stages, or none)."""
        from ..checkpoint import load_module_state

        own = self.module.state_dict()
        part = {k: like(v, own[k]) for k, v in state_dict.items() if k in own}  # fsdp: this rank's slices
        load_module_state(self.module, part, strict=strict, path=path)

    def load_optimizer_state_dict(self, optimizer, state: dict) -> None:
        from ..checkpoint import CheckpointError

        stages = state.get("pipeline_stages")
        if stages is None or len(stages) != self.pp or state.get("schedule_stages") != self._total:
            raise CheckpointError(f"the checkpoint's optimizer state was not saved by a pipeline of {self.pp} processes "
                                  f"x {self.virtual_stages} virtual stages; resume with the same layout, or load the "
                                  f"weights only (trainer.validate/test, or a module's load_state_dict)")
        optimizer.load_state_dict(stages[self.pp_rank])
        if self.data_parallel == "fsdp":
            shard_optimizer_state(optimizer)

    def __repr__(self) -> str:
        return (f"Pipeline(schedule={self.schedule}, stages={self.pp}x{self.virtual_stages}, dp={self.dp} "
                f"({self.data_parallel}), rank={self.global_rank}/{self.world_size})")

