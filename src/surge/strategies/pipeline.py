"""Pipeline parallelism: the model's blocks split into stages, one process per stage, micro-batches
flowing through them on a schedule from ``torch.distributed.pipelining``.

Each process keeps only its stage's parameters (the user's module is trimmed in place, see
:mod:`surge.strategies.model_parallel`), so ``configure_optimizers``, schedulers, callbacks and
``state_dict`` keys stay as they are. A schedule runs forward *and* backward of all micro-batches at
once, so this strategy owns the backward (``owns_backward``): the Trainer zeroes gradients before the
step and does not call backward itself.

The one thing a pipeline needs from the user: ``Module.pipeline_loss(output, target)``, the loss of a
micro-batch from the last stage's output. The batch is ``(inputs, target)`` unless the module defines
``pipeline_split_batch(batch) -> (inputs, target)``. The loss is logged as ``train_loss`` /
``val_loss`` / ``test_loss`` on every rank (broadcast from the last stage).

With more processes than stages, ``Pipeline(stages=p)`` on ``p * d`` processes builds a DeviceMesh
``(dp=d, pp=p)``: each pipeline replica trains on its share of the data and the gradients are averaged
across replicas before the optimizer step.
"""
from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

from ..utils import MisconfigurationError
from .ddp import DDP
from .model_parallel import StageModule, find_body, keep_only, plan_split
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
        timeout, process_group_backend: as for :class:`~surge.strategies.ddp.DDP`.
    """

    name = "pipeline"
    owns_backward = True

    def __init__(self, stages: Optional[int] = None, split_points: Optional[list] = None, schedule: str = "1F1B",
                 microbatches: int = 4, virtual_stages: int = 1, timeout: timedelta = timedelta(minutes=30),
                 process_group_backend: Optional[str] = None) -> None:
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
        self.stages, self.split_points, self.schedule = stages, split_points, schedule
        self.microbatches, self.virtual_stages = microbatches, virtual_stages
        self.pp, self.dp, self.pp_rank, self.dp_rank = 1, 1, 0, 0
        self.mesh = self.pp_group = self.dp_group = None
        self._split_of: Optional[torch.nn.Module] = None
        self._schedules: dict = {}
        self._sync = True
        self._losses: list = []

    # ------------------------------------------------------------------ set-up
    def configure(self, accelerator, device_ids, num_nodes, precision) -> None:
        super().configure(accelerator, device_ids, num_nodes, precision)
        self.pp = self.stages or self.world_size
        if self.world_size % self.pp:
            raise MisconfigurationError(f"Pipeline(stages={self.pp}) does not divide the {self.world_size} processes "
                                        f"(devices x num_nodes) into pipeline replicas")
        self.dp = self.world_size // self.pp

    def setup_environment(self) -> None:
        if self.world_size == 1 and "MASTER_PORT" not in os.environ and not dist.is_initialized():
            from ..launch import find_free_port

            os.environ["MASTER_PORT"] = str(find_free_port())  # a one-stage pipeline still needs a group
        super().setup_environment()
        if self.mesh is None:
            from torch.distributed.device_mesh import init_device_mesh

            self.mesh = init_device_mesh(self.root_device.type, (self.dp, self.pp), mesh_dim_names=("dp", "pp"))
            self.pp_group, self.dp_group = self.mesh.get_group("pp"), self.mesh.get_group("dp")
            self.pp_rank, self.dp_rank = self.mesh.get_local_rank("pp"), self.mesh.get_local_rank("dp")

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
        self._split_of = module
        self._schedules.clear()

    @property
    def is_first(self) -> bool:
        return 0 in self._local

    @property
    def is_last(self) -> bool:
        return self._total - 1 in self._local

    # ------------------------------------------------------------------ the step
    def step(self, stage: str, batch, batch_idx: int = 0, *extra) -> Any:
        module = self.module
        inputs, target = self._split_batch(batch, stage)
        n = inputs.shape[0] if isinstance(inputs, torch.Tensor) else None
        if n is None or n % self.microbatches:
            raise MisconfigurationError(f"a batch of {n} samples does not split into Pipeline(microbatches="
                                        f"{self.microbatches}); make the batch size a multiple of it (drop_last=True "
                                        f"on the DataLoader avoids a short last batch)")
        training = stage == "training"
        schedule = self._schedule(training, inputs, target)
        args = (inputs,) if self.is_first else ()
        kwargs = {"target": target} if self.is_last and target is not None else {}
        self._losses = []
        with self.precision.autocast():
            if training:
                output = schedule.step(*args, **kwargs)
            else:
                output = schedule.eval(*args, **kwargs)
        if stage == "predict":
            box = [output.detach() if isinstance(output, torch.Tensor) else output]
            dist.broadcast_object_list(box, src=self._last_src, group=self.pp_group)
            return box[0]
        # The last `microbatches` values: a schedule's first step also runs the loss on placeholder data
        # while it infers the shapes it sends.
        loss = torch.stack(self._losses[-self.microbatches:]).mean() if self.is_last else torch.zeros((), device=self.root_device)
        loss = loss.detach().float()
        dist.broadcast(loss, src=self._last_src, group=self.pp_group)  # every stage logs and checks the same value
        if training and self._sync and self.dp > 1:
            self._average_gradients()
        name = {"training": "train_loss", "validation": "val_loss", "test": "test_loss"}[stage]
        module.log(name, loss, prog_bar=True, sync_dist=self.dp > 1)
        return loss

    def _split_batch(self, batch, stage: str):
        hook = getattr(self.module, "pipeline_split_batch", None)
        if hook is not None:
            return hook(batch)
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            return batch[0], batch[1]
        if stage == "predict":
            if isinstance(batch, torch.Tensor):
                return batch, None
            if isinstance(batch, (tuple, list)) and len(batch) == 1:
                return batch[0], None
        raise MisconfigurationError(
            f"strategy='pipeline' expects each batch to be (inputs, target), got {type(batch).__name__}"
            f"{f' of length {len(batch)}' if isinstance(batch, (tuple, list)) else ''}; define "
            f"{type(self.module).__name__}.pipeline_split_batch(batch) returning (inputs, target)")

    def _loss_fn(self, output, target):
        hook = getattr(self.module, "pipeline_loss", None)
        if hook is None:
            raise MisconfigurationError(
                f"strategy='pipeline' needs {type(self.module).__name__}.pipeline_loss(output, target): the loss of one "
                f"micro-batch from the last stage's output (e.g. F.cross_entropy(output, target))")
        loss = hook(output, target)
        self._losses.append(loss.detach())
        if not self.module.training:
            return loss
        # The schedule sums the micro-batches' gradients (scale_grads=False): divide here, by the
        # accumulation window too, so the gradients are those of the window's mean loss.
        trainer = getattr(self.module, "_trainer", None) or getattr(self.module, "trainer", None)
        accumulate = getattr(trainer, "accumulate_grad_batches", 1) or 1
        return loss / (self.microbatches * accumulate)

    def _schedule(self, training: bool, inputs: torch.Tensor, target):
        """A schedule (and its PipelineStages) per mode and batch shape: torch's stages size their
        communication buffers on their first batch, so a differently shaped batch needs its own."""
        key = (training, tuple(inputs.shape), inputs.dtype,
               None if target is None else (tuple(target.shape), target.dtype), torch.is_inference_mode_enabled())
        if key not in self._schedules:
            stages = [_pipelining().PipelineStage(m, s, self._total, self.root_device, group=self.pp_group)
                      for s, m in zip(self._local, self._stage_modules)]
            cls_name, multi, _ = _SCHEDULES[self.schedule]
            cls = getattr(_pipelining(), cls_name)
            loss_fn = self._loss_fn if target is not None else None
            self._schedules[key] = cls(stages if multi else stages[0], n_microbatches=self.microbatches,
                                       loss_fn=loss_fn, scale_grads=False)
        return self._schedules[key]

    def no_backward_sync(self, active: bool):
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
        """Clip by value locally, or by the global norm over every stage (sum of squares all-reduced)."""
        self.precision.unscale(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if algorithm != "norm":
            torch.nn.utils.clip_grad_value_(params, value)
            return
        squares = torch.zeros((), device=self.root_device, dtype=torch.float32)
        for p in params:
            squares += p.grad.detach().float().pow(2).sum()
        dist.all_reduce(squares, group=self.pp_group)  # replicas hold the same (averaged) gradients
        coef = torch.clamp(value / (squares.sqrt() + 1e-6), max=1.0)
        for p in params:
            p.grad.detach().mul_(coef.to(p.grad.dtype))

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
        """The whole model's state dict on rank 0 (the stages of replica 0 merged; original key names)."""
        own = {k: v.detach().cpu() for k, v in self.module.state_dict().items()} if self.dp_rank == 0 else {}
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
        own = optimizer.state_dict() if self.dp_rank == 0 else None
        everyone = [None] * self.world_size if self.is_global_zero else None
        dist.gather_object(own, everyone, dst=0)
        if not self.is_global_zero:
            return {}
        return {"pipeline_stages": [s for s in everyone if s is not None], "schedule_stages": self._total}

    def load_module_state_dict(self, state_dict: dict, strict: bool = True, path: str = "") -> None:
        """Load this stage's part of a full checkpoint (one saved by any number of stages, or none)."""
        from ..checkpoint import load_module_state

        own = self.module.state_dict()
        load_module_state(self.module, {k: v for k, v in state_dict.items() if k in own}, strict=strict, path=path)

    def load_optimizer_state_dict(self, optimizer, state: dict) -> None:
        from ..checkpoint import CheckpointError

        stages = state.get("pipeline_stages")
        if stages is None or len(stages) != self.pp or state.get("schedule_stages") != self._total:
            raise CheckpointError(f"the checkpoint's optimizer state was not saved by a pipeline of {self.pp} processes "
                                  f"x {self.virtual_stages} virtual stages; resume with the same layout, or load the "
                                  f"weights only (trainer.validate/test, or a module's load_state_dict)")
        optimizer.load_state_dict(stages[self.pp_rank])

    def __repr__(self) -> str:
        return (f"Pipeline(schedule={self.schedule}, stages={self.pp}x{self.virtual_stages}, dp={self.dp}, "
                f"rank={self.global_rank}/{self.world_size})")
