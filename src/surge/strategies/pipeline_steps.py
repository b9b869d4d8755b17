"""How the user's steps run under :class:`~surge.strategies.pipeline.Pipeline`, on the last stage.

A pipeline process holds only its stage of the model, so the user's ``training_step`` cannot run the
model itself. Instead the schedule runs the stages, and the step runs on the last stage with ``self(...)``
answering that stage's output (:func:`call_step`). In training that happens once per micro-batch, inside
the schedule's loss (:meth:`MicroStep.loss`), on the micro-batch :func:`split_batch` cut from the batch.

What the step passes to ``self.log`` is recorded there (:func:`recording`) rather than logged, merged
over the micro-batches of a batch by each value's ``reduce_fx`` (:func:`merge_logs`), sent to every stage
by the strategy, and logged on each (:func:`replay_logs`), so rank 0, which holds the first stage and
writes the loggers, sees the metrics too.

Nothing here imports ``torch.distributed.pipelining``: this module loads with the strategy.
"""
from __future__ import annotations

import contextlib
import dataclasses
import zlib
from collections.abc import Mapping
from typing import Any, Optional

import torch
import torch.distributed as dist

from ..results import _as_tensor, _reduce_name
from ..utils import MisconfigurationError, SurgeError

_MISSING = object()


@dataclasses.dataclass
class MicroStep:
    """One training batch on its way through a schedule: what the loss of each micro-batch needs, and what
    it left (the losses and ``self.log`` calls of each micro-batch, by index)."""

    batches: list              # the user's batch split into micro-batches (last stage only)
    batch_idx: int
    extra: tuple               # optimizer_idx, when training_step takes one
    schedule: Any
    losses: dict = dataclasses.field(default_factory=dict)
    logs: dict = dataclasses.field(default_factory=dict)

    def loss(self, module: torch.nn.Module, output, target: torch.Tensor, divisor: int) -> torch.Tensor:
        """``module.training_step`` on micro-batch ``target`` (its index) with ``self(...)`` returning
        ``output``; its loss divided by ``divisor``, the loss that the schedule's backward takes."""
        if not _shapes_known(self.schedule):
            # torch infers a new schedule's shapes with one forward and backward on placeholder activations:
            # any loss with a gradient will do there, and the user's step must not see placeholder data.
            return _zero_loss(output)
        i = int(target)  # a one-element CPU tensor (Pipeline.step): one read, no device sync
        logs = self.logs[i] = []
        with recording(module, logs):
            result = call_step(module, "training", output, self.batches[i], self.batch_idx, self.extra)
        loss = _loss_of(result)
        self.losses[i] = None if loss is None else loss.detach()
        if loss is None:  # this micro-batch adds no gradient
            return _zero_loss(output)
        return loss / divisor

    def summary(self, microbatches: int) -> tuple:
        """The batch's mean loss (``None`` if every micro-batch returned ``None``) and its merged logs."""
        losses = [self.losses[i] for i in range(microbatches) if self.losses.get(i) is not None]
        loss = torch.stack(losses).mean().float() if losses else None
        return loss, merge_logs([self.logs.get(i, []) for i in range(microbatches)])


def call_step(module: torch.nn.Module, stage: str, output, batch, batch_idx: int, extra: tuple):
    """``module.{stage}_step(batch, batch_idx, *extra)`` with ``self(...)`` returning ``output``: the step
    must call ``self(...)`` exactly once, on as many samples as ``output`` holds."""
    name = f"{stage}_step"
    calls = []

    def forward(*args, **kwargs):
        calls.append(None)
        if len(calls) > 1:
            raise MisconfigurationError(_one_call(name, "called self(...) a second time"))
        first = args[0] if args else None
        if isinstance(first, torch.Tensor) and isinstance(output, torch.Tensor) and first.dim() \
                and first.shape[0] != output.shape[0]:
            raise MisconfigurationError(_one_call(name, f"called self(...) on {first.shape[0]} samples, but the "
                                                        f"pipeline ran the model on {output.shape[0]}"))
        return output

    saved = module.__dict__.get("forward", _MISSING)
    # An instance attribute: nn.Module.__call__ runs it, hooks included. Set past nn.Module.__setattr__ (a
    # function is no parameter, buffer or submodule: its bookkeeping has nothing to do), once per micro-batch.
    object.__setattr__(module, "forward", forward)
    try:
        result = getattr(module, name)(batch, batch_idx, *extra)
    except SurgeError:
        raise
    except Exception as err:
        if not calls:  # most likely a submodule called directly: this process lacks the other stages
            raise MisconfigurationError(_one_call(name, f"raised {type(err).__name__} before calling self(...): "
                                                        f"{err}")) from err
        raise
    finally:
        if saved is _MISSING:
            object.__delattr__(module, "forward")
        else:
            object.__setattr__(module, "forward", saved)
    if not calls:
        raise MisconfigurationError(_one_call(name, "never called self(...)"))
    return result


@contextlib.contextmanager
def recording(module: torch.nn.Module, logs: list):
    """While the user's step runs on the last stage, its ``self.log`` calls are recorded in ``logs``
    (name, value, options) to be sent to every stage, instead of logged here."""
    results = getattr(module.trainer, "_results", None)
    if results is None:
        yield
        return

    def record(name, value, **options):
        options["reduce_fx"] = _reduce_name(options["reduce_fx"], name)
        logs.append((name, _as_tensor(value, name).detach(), options))

    results.log = record
    try:
        yield
    finally:
        del results.log


def replay_logs(module: torch.nn.Module, logs: list, replicas: int = 1, group=None,
                device: Optional[torch.device] = None) -> None:
    """Log on this process what the user's step logged on the last stage (so rank 0, which writes the
    loggers and the progress bar, ModelCheckpoint(monitor=...) and EarlyStopping see it on every rank).
    ``group`` holds the ``replicas`` data-parallel copies of this stage, across which ``sync_dist`` reduces
    (on ``device``)."""
    results = getattr(module.trainer, "_results", None)
    if results is None or not logs:
        return
    if replicas > 1 and any(options["sync_dist"] for _, _, options in logs):
        logs = _reduce_over_replicas(logs, results.batch_size, replicas, group, device)
    for name, value, options in logs:
        # The stages of a replica hold the same values: a sync over every process would count each
        # replica once per stage. sync_dist was honoured above, across the replicas only.
        results.log(name, value, **dict(options, sync_dist=False))


def _reduce_over_replicas(logs: list, batch_size: int, replicas: int, group, device: torch.device) -> list:
    """The values logged with ``sync_dist=True`` reduced across the data-parallel replicas."""
    synced = [k for k, (_, _, options) in enumerate(logs) if options["sync_dist"]]
    tag = float(zlib.crc32("|".join(f"{logs[k][0]}:{logs[k][2]['reduce_fx']}" for k in synced).encode()))
    tags = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(replicas)]
    dist.all_gather(tags, torch.tensor([tag], dtype=torch.float64, device=device), group=group)
    if any(float(t) != tag for t in tags):
        raise SurgeError("self.log(..., sync_dist=True) in a step logged different names (or reduce_fx) on the "
                         "pipeline replicas in the same step; log the same names in the same order on every "
                         "replica, or drop sync_dist for rank-dependent keys")
    rows = torch.tensor([[float(logs[k][1]), float(logs[k][2]["batch_size"] or batch_size)] for k in synced],
                        dtype=torch.float64, device=device)
    gathered = [torch.empty_like(rows) for _ in range(replicas)]
    dist.all_gather(gathered, rows, group=group)
    every = torch.stack(gathered)  # (replica, metric, [value, batch size])
    out = list(logs)
    for j, k in enumerate(synced):
        name, value, options = logs[k]
        v, w = every[:, j, 0], every[:, j, 1]
        reduce = options["reduce_fx"]
        reduced = (v * w).sum() / w.sum() if reduce == "mean" else getattr(v, reduce)()
        out[k] = (name, reduced.to(device=value.device, dtype=value.dtype), options)
    return out


def split_batch(batch, size: int, parts: int) -> list:
    """``batch`` as ``parts`` micro-batches: every tensor whose first dimension is ``size`` is split along it
    (``torch.tensor_split``), through tuples, lists and dicts; anything else goes whole into each part."""
    if isinstance(batch, torch.Tensor):
        return list(torch.tensor_split(batch, parts)) if batch.dim() and batch.shape[0] == size else [batch] * parts
    if isinstance(batch, (tuple, list)):
        columns = [split_batch(item, size, parts) for item in batch]
        rows = [[column[i] for column in columns] for i in range(parts)]
        if hasattr(batch, "_fields"):  # a namedtuple
            return [type(batch)(*row) for row in rows]
        return [type(batch)(row) for row in rows]
    if isinstance(batch, Mapping):
        columns = {k: split_batch(v, size, parts) for k, v in batch.items()}
        return [{k: column[i] for k, column in columns.items()} for i in range(parts)]
    return [batch] * parts


def merge_logs(per_micro: list) -> list:
    """One value per name for the whole batch, in the order the names were first logged: the micro-batches'
    values reduced by their ``reduce_fx`` ("mean" weighted by ``batch_size`` when the step passed one)."""
    merged: dict = {}
    for logs in per_micro:
        for name, value, options in logs:
            merged.setdefault(name, (options, []))[1].append((value, options["batch_size"]))
    out = []
    for name, (options, entries) in merged.items():
        values = torch.stack([v.to(torch.float64) for v, _ in entries])
        sizes = [b for _, b in entries]
        if options["reduce_fx"] == "mean":
            weights = torch.tensor([1.0 if b is None else float(b) for b in sizes], dtype=torch.float64,
                                   device=values.device)
            value = (values * weights).sum() / weights.sum()
        else:
            value = getattr(values, options["reduce_fx"])()
        batch_size = sum(sizes) if all(b is not None for b in sizes) else None
        out.append((name, value.to(entries[0][0].dtype), dict(options, batch_size=batch_size)))
    return out


def detached_to(obj, device: torch.device):
    """``obj`` with every tensor in it detached and on ``device`` (through tuples, lists and dicts)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to(device)
    if isinstance(obj, (tuple, list)):
        items = [detached_to(o, device) for o in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    if isinstance(obj, dict):
        return {k: detached_to(v, device) for k, v in obj.items()}
    return obj


def _shapes_known(schedule) -> bool:
    """False while torch infers a new schedule's shapes (it runs the loss once on placeholder activations)."""
    for flag in ("_stage_backward_initialized", "_stages_backward_initialized"):
        if hasattr(schedule, flag):
            return bool(getattr(schedule, flag))
    return True


def _zero_loss(output) -> torch.Tensor:
    """A loss whose gradient is zero but that still depends on ``output`` (so backward has a path)."""
    tensors = output if isinstance(output, (tuple, list)) else [output]
    return sum(t.sum() * 0.0 for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point())


def _loss_of(result) -> Optional[torch.Tensor]:
    if result is None:
        return None
    loss = result.get("loss") if isinstance(result, Mapping) else result
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        if isinstance(result, Mapping):
            what = f"a dict without a 'loss' tensor (keys: {sorted(result)})"
        else:
            what = f"a tensor of shape {tuple(result.shape)}" if isinstance(result, torch.Tensor) else type(result).__name__
        raise SurgeError(f"training_step must return a scalar loss tensor, a dict with 'loss', or None; got {what}")
    return loss if loss.dim() == 0 else loss.reshape(())


def _one_call(step: str, what: str) -> str:
    return (f"under strategy='pipeline', {step} must compute the model's output with one call self(inputs): this "
            f"process holds only its stage of the model, and self(...) there returns the last stage's output; "
            f"{step} {what}. Call self(x) exactly once, not a submodule (self.model(x), self.blocks[0](h)), and "
            f"define pipeline_inputs(self, batch) if x is not batch[0]")


class FromLast:
    """What a step left on the last stage (its result and logs) sent to every stage of its pipeline, each step.

    ``broadcast_object_list`` pickles and makes two broadcasts (size, then bytes): on a 2-vCPU VM with gloo
    that cost 2.5-3.5 ms a step, more than a small model's stage computes at one micro-batch, and every
    stage waits for it (it showed up as bubble, see ``benchmarks/pipeline_bubble.py``). A training step
    leaves the same thing each batch, though: a scalar loss and the same names logged with the same options.
    So the first time a step leaves something of a new *layout* (the result's kind, each log's name, dtype
    and options), it goes as an object together with that layout, which every stage keeps in the same list;
    after that, one broadcast of a small float64 tensor carries the layout's index and the values. Anything
    else (a prediction, a dict, more values than fit) still goes as an object.
    """

    CAPACITY = 32   # values the tensor carries: the result and up to 31 logged values
    LAYOUTS = 64    # layouts kept; more (a batch_size that changes every step, say) go as objects

    def __init__(self) -> None:
        self.layouts: list = []  # the same list on every stage of the pipeline, in the order first sent
        self._index: dict = {}  # layout -> its place in ``layouts`` (the last stage looks layouts up)

    def post(self, src: int, group, device: torch.device):
        """On a stage other than the last, before its step: post the receive of what the step will leave on
        the last stage (a point-to-point receive on ``group``, which must carry nothing else meanwhile). The
        last stage sends as soon as its own step ends, usually before this stage's last backward is done, so
        when this stage reads it the values are there: no round trip between the processes on the step's
        critical path. (A posted gloo receive costs the calling thread a few tens of microseconds and no
        other thread; a posted broadcast would wake a worker thread of the group.) Pass the result to
        :meth:`send`."""
        wire = torch.empty((1 + self.CAPACITY,), dtype=torch.float64, device=device)
        return wire, dist.irecv(wire, src=src, group=group)

    def send(self, payload, is_last: bool, src: int, group, device: torch.device, to: torch.device, posted=None,
             p2p: bool = False):
        """``payload`` ((result, logs), from the last stage) on every stage, on device ``to``; ``device`` is
        the one the collective runs on (the accelerator under NCCL, the CPU under gloo). ``p2p``: the stages
        posted their receives (:meth:`post`, whose result is ``posted`` here) and the last stage sends to each
        point to point; otherwise one broadcast."""
        layout = None
        if posted is not None:
            wire, work = posted
            work.wait()
        else:
            wire = torch.full((1 + self.CAPACITY,), -1.0, dtype=torch.float64, device=device)  # [0] = -1: an object follows
            if is_last:
                layout = _layout(payload)
                if layout is not None and len(layout[1]) >= self.CAPACITY:
                    layout = None  # too many values for the tensor: goes as an object, and is not kept
                if layout in self._index:
                    result, logs = payload
                    values = [torch.zeros(()) if result is None else result] + [value for _, value, _ in logs]
                    wire[0] = float(self._index[layout])
                    wire[1:1 + len(values)] = torch.stack([v.detach().to(device, torch.float64) for v in values])
            if p2p:
                for work in [dist.isend(wire, dst=rank, group=group) for rank in dist.get_process_group_ranks(group)
                             if rank != src]:
                    work.wait()
            else:
                dist.broadcast(wire, src=src, group=group)
        index = int(wire[0])
        if index < 0:
            keep = layout is not None and len(self.layouts) < self.LAYOUTS
            box = [(detached_to(payload, torch.device("cpu")), layout if keep else None) if is_last else None]
            dist.broadcast_object_list(box, src=src, group=group, device=device)
            sent, new = box[0]
            if new is not None:
                self._index[new] = len(self.layouts)
                self.layouts.append(new)
            return payload if is_last else detached_to(sent, to)
        if is_last:
            return payload
        kind, entries = self.layouts[index]
        values = wire[1:2 + len(entries)].to(to)
        result = None if kind is None else values[0].to(kind)
        logs = [(name, values[1 + i].to(dtype), dict(options)) for i, (name, dtype, options) in enumerate(entries)]
        return result, logs


def _layout(payload) -> Optional[tuple]:
    """(the result's dtype or None, ((name, dtype, options), ...) of each log) when the result is ``None`` or a
    floating scalar and the logs are floating scalars; otherwise ``None`` (the payload goes as an object)."""
    result, logs = payload
    if result is None:
        kind = None
    elif isinstance(result, torch.Tensor) and result.dim() == 0 and result.is_floating_point():
        kind = result.dtype
    else:
        return None
    entries = []
    for name, value, options in logs:
        if value.dim() or not value.is_floating_point():
            return None
        entries.append((name, value.dtype, tuple(sorted(options.items()))))
    try:
        hash(tuple(entries))
    except TypeError:  # an option that cannot be compared as a key (none of self.log's are, today)
        return None
    return kind, tuple(entries)
