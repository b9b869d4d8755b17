"""What ``self.log`` collects and how it is reduced.

Values stay on their device: a step value is kept as the tensor it was, and epoch values accumulate
into device tensors. Nothing here calls ``.item()``; the Trainer converts to Python floats only when
a logger or the progress bar writes them out.
"""
from __future__ import annotations

import numbers
import zlib
from typing import Callable, Optional, Union

import torch

from .data import batch_size_of
from .utils import SurgeError

_REDUCE_NAMES = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min"}
_REDUCE_FNS = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min"}

# Hooks that log per step by default; everything else logs per epoch by default.
_STEP_HOOKS = {"training_step", "on_train_batch_start", "on_train_batch_end", "on_before_backward",
               "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad", "optimizer_step",
               "lr_scheduler_step"}
# Hooks where logging makes no sense (no step or epoch to attach the value to).
_FORBIDDEN_HOOKS = {"setup", "teardown", "configure_optimizers", "configure_model", "prepare_data",
                    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end", "predict_step",
                    "on_save_checkpoint", "on_load_checkpoint"}


class _Metric:
    """One logged name in one stage: its options, its latest step value and its epoch accumulator."""

    __slots__ = ("name", "on_step", "on_epoch", "prog_bar", "logger", "reduce", "sync_dist", "step_value",
                 "total", "weight", "fresh")

    def __init__(self, name, on_step, on_epoch, prog_bar, logger, reduce, sync_dist):
        self.name, self.on_step, self.on_epoch = name, on_step, on_epoch
        self.prog_bar, self.logger, self.reduce, self.sync_dist = prog_bar, logger, reduce, sync_dist
        self.step_value: Optional[torch.Tensor] = None
        self.total: Optional[torch.Tensor] = None
        self.weight = 0
        self.fresh = False  # logged since the last step write-out

    def update(self, value: torch.Tensor, batch_size: int) -> None:
        self.step_value = value
        self.fresh = True
        if not self.on_epoch:
            return
        if self.reduce == "mean":
            v = value * batch_size
            self.total = v if self.total is None else self.total + v
            self.weight += batch_size
        elif self.total is None:
            self.total = value
        elif self.reduce == "sum":
            self.total = self.total + value
        elif self.reduce == "max":
            self.total = torch.maximum(self.total, value)
        else:
            self.total = torch.minimum(self.total, value)

    def epoch_value(self) -> Optional[torch.Tensor]:
        if self.total is None:
            return None
        return self.total / self.weight if self.reduce == "mean" else self.total


class Results:
    """The metrics of one stage ("train", "validate", "test") of a run."""

    def __init__(self, stage: str, strategy=None):
        self.stage = stage
        self.strategy = strategy
        self.metrics: dict[str, _Metric] = {}
        self.hook: str = ""           # the hook now running: picks defaults and checks where log is allowed
        self.batch = None             # the current batch: its size weighs the epoch mean, read when needed
        self._batch_size: Optional[int] = None
        self.dataloader_idx: Optional[int] = None  # set when a stage has several dataloaders
        self._checked: dict[tuple, _Metric] = {}  # self.log's options (and hook) -> the metric they were checked for

    def new_batch(self, batch) -> None:
        self.batch, self._batch_size = batch, None

    @property
    def batch_size(self) -> int:
        """The size of the current batch (1 when none or it holds no tensor), found on first use."""
        if self._batch_size is None:
            self._batch_size = batch_size_of(self.batch) if self.batch is not None else 1
        return self._batch_size

    def log(self, name, value, *, prog_bar, logger, on_step, on_epoch, reduce_fx, enable_graph, sync_dist,
            add_dataloader_idx, batch_size, rank_zero_only) -> None:
        # A step logs the same names with the same options every batch: check those once per epoch.
        key = (name, self.hook, prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, add_dataloader_idx,
               self.dataloader_idx)
        try:
            metric = self._checked.get(key)
        except TypeError:  # an unhashable option: the full check below says what is wrong with it
            key, metric = None, None
        if metric is None:
            metric = self._metric_for(name, prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, add_dataloader_idx)
            if key is not None:
                self._checked[key] = metric
        tensor = _as_tensor(value, name)
        if not enable_graph:
            tensor = tensor.detach()
        if sync_dist and metric.on_step and self.strategy is not None and self.strategy.world_size > 1:
            tensor = self._sync_step_value(metric.name, metric.reduce, tensor)
        if batch_size is None and metric.on_epoch and metric.reduce == "mean":
            batch_size = self.batch_size
        metric.update(tensor, batch_size)

    def _metric_for(self, name, prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, add_dataloader_idx) -> _Metric:
        """The metric a ``self.log`` call goes to, its options checked against the hook and earlier calls."""
        hook = self.hook
        if not isinstance(name, str) or not name:
            raise SurgeError(f"self.log: name must be a non-empty str, got {name!r}")
        if hook in _FORBIDDEN_HOOKS:
            raise SurgeError(f"self.log({name!r}) cannot be called from {hook}(); log from a step or an epoch-end hook")
        step_hook = hook in _STEP_HOOKS
        if on_step is None:
            on_step = step_hook
        if on_epoch is None:
            on_epoch = not step_hook
        if self.stage != "train" and on_step and not step_hook and hook.endswith("epoch_end"):
            raise SurgeError(f"self.log({name!r}, on_step=True) cannot be used in {hook}(); there is no step there")
        if not (on_step or on_epoch):
            raise SurgeError(f"self.log({name!r}): on_step and on_epoch are both False, so the value would go nowhere")
        reduce = _reduce_name(reduce_fx, name)
        if add_dataloader_idx and self.dataloader_idx is not None:
            name = f"{name}/dataloader_idx_{self.dataloader_idx}"
        metric = self.metrics.get(name)
        if metric is None:
            metric = self.metrics[name] = _Metric(name, on_step, on_epoch, prog_bar, logger, reduce, sync_dist)
        elif (metric.on_step, metric.on_epoch, metric.reduce) != (on_step, on_epoch, reduce):
            raise SurgeError(
                f"self.log({name!r}) was called with on_step={on_step}, on_epoch={on_epoch}, reduce_fx={reduce!r} "
                f"but earlier in this {self.stage} epoch with on_step={metric.on_step}, on_epoch={metric.on_epoch}, "
                f"reduce_fx={metric.reduce!r}; use the same options every time"
            )
        return metric

    # ------------------------------------------------------------------ read-outs
    def step_metrics(self, for_logger: bool) -> dict[str, torch.Tensor]:
        """The per-step values logged since the last call (names get ``_step`` when also per epoch)."""
        out = {}
        for m in self.metrics.values():
            if m.on_step and m.fresh and (m.logger if for_logger else m.prog_bar):
                out[f"{m.name}_step" if m.on_epoch else m.name] = m.step_value
        return out

    def mark_step_written(self) -> None:
        for m in self.metrics.values():
            m.fresh = False

    def epoch_metrics(self) -> dict[str, tuple[torch.Tensor, _Metric]]:
        """Reduce the epoch accumulators (across processes for ``sync_dist=True``)."""
        out = {}
        for name, m in self.metrics.items():
            value = m.epoch_value()
            if value is None:
                continue
            out[name] = (value, m)
        if self.strategy is not None and self.strategy.world_size > 1:
            out.update(self._sync_epoch_values(out))
        return out

    # ------------------------------------------------------------------ across processes
    def _sync_step_value(self, name: str, reduce: str, tensor: torch.Tensor) -> torch.Tensor:
        """The step value of ``name`` reduced over ranks, with a check that every rank logged the same name.

        Each rank sends (a tag of the name, its value) in one all_gather: when another rank is at a
        different ``self.log(..., sync_dist=True)`` call the tags differ and this raises on every rank,
        naming the key, instead of silently mixing two metrics (or waiting forever).
        """
        strategy = self.strategy
        device = strategy._collective_device() if hasattr(strategy, "_collective_device") else tensor.device
        tag = float(zlib.crc32(f"{name}|{reduce}".encode()))
        pair = torch.stack([torch.tensor(tag, dtype=torch.float64, device=device),
                            tensor.detach().to(device=device, dtype=torch.float64)])
        with strategy.collective(f"the all_gather of the step value self.log({name!r}, sync_dist=True)"):
            gathered = strategy.all_gather(pair)  # (world, 2)
        tags = gathered[:, 0].tolist()
        if any(t != tag for t in tags):
            same = [r for r, t in enumerate(tags) if t == tag]
            other = [r for r, t in enumerate(tags) if t != tag]
            raise SurgeError(
                f"self.log({name!r}, sync_dist=True) on ranks {same} met a different self.log(..., sync_dist=True) "
                f"call on ranks {other} in the same step (another key, or another reduce_fx): per-step values "
                f"with sync_dist must be logged on every rank with the same names in the same order. Log "
                f"rank-dependent keys without sync_dist, or on_step=False (epoch values may differ across ranks)"
            )
        values = gathered[:, 1]
        reduced = {"mean": values.mean, "sum": values.sum, "max": values.max, "min": values.min}[reduce]()
        return reduced.to(device=tensor.device, dtype=tensor.dtype)

    def _sync_epoch_values(self, out: dict) -> dict[str, tuple[torch.Tensor, _Metric]]:
        """The ``sync_dist`` epoch values reduced over the union of the keys every rank logged.

        Ranks may log different keys (a rank that saw no sample of a class, a key logged under
        ``if rank == 0``, an epoch-end hook): the key sets are gathered first, and a rank that did not
        log a key contributes nothing to it (a mean over the samples of the ranks that did; sum, max
        and min over those ranks). Every rank calls the same collectives in the same order, so
        nothing waits forever. A key logged with different ``reduce_fx`` or ``on_step`` on different
        ranks is an error naming the key and the ranks.
        """
        strategy = self.strategy
        mine = sorted((name, m.reduce, m.on_step, m.prog_bar, m.logger) for name, (_, m) in out.items() if m.sync_dist)
        what = f"the {self.stage} epoch-end reduction of the values logged with sync_dist=True"
        with strategy.collective(what):
            everyone = strategy.all_gather_object(mine)
        options: dict[str, dict[tuple, list[int]]] = {}
        for rank, entries in enumerate(everyone):
            for name, reduce, on_step, prog_bar, logger in entries:
                options.setdefault(name, {}).setdefault((reduce, on_step, prog_bar, logger), []).append(rank)
        for name, variants in options.items():
            if len({(r, s) for r, s, _, _ in variants}) > 1:
                detail = "; ".join(f"reduce_fx={r!r}, on_step={s} on ranks {ranks}"
                                   for (r, s, _, _), ranks in variants.items())
                raise SurgeError(f"self.log({name!r}, sync_dist=True) was logged with different options on "
                                 f"different ranks ({detail}); use the same options on every rank")
        if not options:
            return {}
        names = sorted(options)
        device = strategy._collective_device() if hasattr(strategy, "_collective_device") else torch.device("cpu")
        neutral = {"mean": 0.0, "sum": 0.0, "max": -float("inf"), "min": float("inf")}
        # One vector per reduce op: a mean travels as (sum of value x batch size, total batch size).
        packs = {"sum": [], "max": [], "min": []}
        slots = {}
        for name in names:
            reduce = next(iter(options[name]))[0]
            local = out.get(name)
            m = local[1] if local is not None and local[1].sync_dist else None
            if reduce == "mean":
                total = float(m.total) if m is not None else 0.0  # read on the host: once per epoch
                slots[name] = ("sum", len(packs["sum"]))
                packs["sum"] += [total, float(m.weight) if m is not None else 0.0]
            else:
                op = "sum" if reduce == "sum" else reduce
                slots[name] = (op, len(packs[op]))
                packs[op].append(float(m.total) if m is not None else neutral[reduce])
        with strategy.collective(f"{what} ({', '.join(names)})"):
            reduced = {op: strategy.reduce(torch.tensor(vals, dtype=torch.float64, device=device), op)
                       for op, vals in packs.items() if vals}
        synced = {}
        for name in names:
            (reduce, on_step, prog_bar, logger), _ = next(iter(options[name].items()))
            op, i = slots[name]
            value = reduced[op][i] / reduced[op][i + 1] if reduce == "mean" else reduced[op][i]
            local = out.get(name)
            m = local[1] if local is not None else _Metric(name, on_step, True, prog_bar, logger, reduce, True)
            dtype = local[0].dtype if local is not None else torch.float32
            target = local[0].device if local is not None else device
            synced[name] = (value.to(device=target, dtype=dtype), m)
        return synced

    def reset(self) -> None:
        self.metrics.clear()
        self._checked.clear()


def _reduce_name(reduce_fx: Union[str, Callable], name: str) -> str:
    if isinstance(reduce_fx, str) and reduce_fx.lower() in _REDUCE_NAMES:
        return _REDUCE_NAMES[reduce_fx.lower()]
    if reduce_fx in _REDUCE_FNS:
        return _REDUCE_FNS[reduce_fx]
    raise SurgeError(
        f"self.log({name!r}): reduce_fx must be one of 'mean', 'sum', 'max', 'min' (or torch.mean/sum/max/min), "
        f"got {reduce_fx!r}"
    )


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.ndim == 0 and value.is_floating_point():  # a loss, most of the time
            return value
        if value.numel() != 1:
            raise SurgeError(f"self.log({name!r}) needs a single number, got a tensor of shape {tuple(value.shape)}")
        if value.dim():
            value = value.reshape(())
        return value if value.is_floating_point() else value.double()
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        raise SurgeError(f"self.log({name!r}) needs a number or a one-element tensor, got {type(value).__name__}")
    return torch.tensor(float(value), dtype=torch.float64)
