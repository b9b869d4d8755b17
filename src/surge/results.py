"""What ``self.log`` collects and how it is reduced.

Values stay on their device: a step value is kept as the tensor it was, and epoch values accumulate
into device tensors. Nothing here calls ``.item()``; the Trainer converts to Python floats only when
a logger or the progress bar writes them out.
"""
from __future__ import annotations

import hashlib
import numbers
import sys
import zlib
from typing import Callable, Optional, Union

import torch

from .data import batch_size_of
from .utils import MisconfigurationError, SurgeError

_REDUCE_NAMES = {"mean": "mean", "avg": "mean", "sum": "sum", "max": "max", "min": "min"}
# Lightning takes the torch functions and Python's builtins for the same four reductions.
_REDUCE_FNS = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min",
               sum: "sum", max: "max", min: "min"}

# Where self.log may be called, by the hook running (Lightning's rules, so that ported code logs the same):
#   "step"       per training step by default (on_step=True, on_epoch=False); either level may be chosen
#   "eval_step"  per epoch by default (on_step=False, on_epoch=True); either level may be chosen
#   "epoch"      once per epoch only: on_step must be False, on_epoch True
# Every other hook (setup, on_fit_start, on_train_end, predict, checkpoint and transfer hooks,
# lr_scheduler_step...) has no step or epoch to attach a value to: self.log there is an error.
_LOG_LEVELS = {
    **dict.fromkeys(("training_step", "on_train_batch_start", "on_train_batch_end", "on_before_backward", "backward",
                     "on_after_backward", "on_before_optimizer_step", "optimizer_step", "configure_gradient_clipping",
                     "clip_gradients", "on_before_zero_grad", "optimizer_zero_grad"), "step"),
    **dict.fromkeys(("validation_step", "test_step", "on_validation_batch_start", "on_validation_batch_end",
                     "on_test_batch_start", "on_test_batch_end"), "eval_step"),
    **dict.fromkeys(("on_train_start", "on_validation_start", "on_test_start", "on_train_epoch_start",
                     "on_train_epoch_end", "on_validation_epoch_start", "on_validation_epoch_end",
                     "on_test_epoch_start", "on_test_epoch_end"), "epoch"),
}


def _default_float() -> torch.dtype:
    """What logged values are kept in: the default float dtype, but never less than float32."""
    dtype = torch.get_default_dtype()
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def is_metric_object(value) -> bool:
    """Whether ``value`` is a ``torchmetrics.Metric`` (checked without importing torchmetrics: a program
    that never imported it cannot hold one)."""
    tm = sys.modules.get("torchmetrics")
    return tm is not None and isinstance(value, tm.Metric)


def is_metric_collection(value) -> bool:
    """Whether ``value`` is a ``torchmetrics.MetricCollection`` (what ``self.log_dict`` also takes)."""
    tm = sys.modules.get("torchmetrics")
    return tm is not None and isinstance(value, tm.MetricCollection)


class _Metric:
    """One logged name in one hook of one stage: its options, its latest step value and its epoch accumulator."""

    __slots__ = ("name", "hook", "options", "on_step", "on_epoch", "prog_bar", "logger", "reduce", "sync_dist",
                 "step_value", "total", "weight", "fresh")

    def __init__(self, name, hook, options):
        self.name, self.hook, self.options = name, hook, options
        self.on_step, self.on_epoch = options["on_step"], options["on_epoch"]
        self.prog_bar, self.logger, self.reduce = options["prog_bar"], options["logger"], options["reduce_fx"]
        self.sync_dist = options["sync_dist"]
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

    def reset(self) -> None:
        """End of the epoch: nothing to do for plain values (the Results holding them is dropped)."""


class _MetricObject(_Metric):
    """A ``torchmetrics.Metric`` logged as it is. Its step value is what its last ``metric(preds, target)``
    call returned; its epoch value is ``metric.compute()``, after which the metric is reset. torchmetrics
    synchronises its own state across processes in ``compute()``, so surge adds no reduction of its own."""

    __slots__ = ("metric",)

    def __init__(self, name, hook, options):
        super().__init__(name, hook, options)
        self.sync_dist = False  # torchmetrics syncs in compute(); a second all-reduce would count twice
        self.metric = None

    def update(self, metric, batch_size: int) -> None:
        self.metric = metric
        value = metric._forward_cache  # set by metric(...) (forward); None after update() alone
        if self.on_step and isinstance(value, torch.Tensor):
            self.step_value = value.detach()
            self.fresh = True

    def epoch_value(self) -> Optional[torch.Tensor]:
        if not self.on_epoch or self.metric is None:
            return None
        value = self.metric.compute()
        if not isinstance(value, torch.Tensor):
            raise SurgeError(f"The `.compute()` return of the metric logged as {self.name!r} must be a tensor. "
                             f"Found {value!r}: {type(self.metric).__name__}.compute() must return one number "
                             f"to be logged (log the parts of a dict one by one, with self.log_dict)")
        return value.detach()

    def reset(self) -> None:
        if self.metric is not None:
            self.metric.reset()


class Results:
    """The metrics of one stage ("train", "validate", "test") of a run."""

    def __init__(self, stage: str, strategy=None):
        self.stage = stage
        self.strategy = strategy
        # (hook, name) -> metric. One name may be logged from several hooks, each with its own options
        # (training_step per step, on_train_epoch_end per epoch): the read-outs give the later one.
        self.metrics: dict[tuple[str, str], _Metric] = {}
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
            add_dataloader_idx, batch_size, rank_zero_only, metric_attribute=None) -> None:
        obj = not isinstance(value, (torch.Tensor, numbers.Number)) and is_metric_object(value)
        # A step logs the same names with the same options every batch: check those once per epoch.
        key = (name, self.hook, prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, add_dataloader_idx,
               self.dataloader_idx, enable_graph, rank_zero_only, obj)
        try:
            metric = self._checked.get(key)
        except TypeError:  # an unhashable option: the full check below says what is wrong with it
            key, metric = None, None
        if metric is None:
            metric = self._metric_for(name, obj, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                                      reduce_fx=reduce_fx, enable_graph=enable_graph, sync_dist=sync_dist,
                                      add_dataloader_idx=add_dataloader_idx, rank_zero_only=rank_zero_only)
            if key is not None:
                self._checked[key] = metric
        if obj:
            metric.update(value, 1)
            return
        tensor = _as_tensor(value, name)
        if not enable_graph:
            tensor = tensor.detach()
        if sync_dist and metric.on_step and self.strategy is not None and self.strategy.world_size > 1:
            tensor = self._sync_step_value(metric.name, metric.reduce, tensor)
        if batch_size is None and metric.on_epoch and metric.reduce == "mean":
            batch_size = self.batch_size
        metric.update(tensor, batch_size)

    def _metric_for(self, name, obj: bool, **given) -> _Metric:
        """The metric a ``self.log`` call goes to, its options checked against the hook and earlier calls."""
        hook = self.hook
        if not isinstance(name, str) or not name:
            raise SurgeError(f"self.log: name must be a non-empty str, got {name!r}")
        on_step, on_epoch = _levels(hook, name, given["on_step"], given["on_epoch"])
        reduce = _reduce_name(given["reduce_fx"], name)
        if given["add_dataloader_idx"] and "/dataloader_idx_" in name:
            raise MisconfigurationError(
                f"You called `self.log` with the key `{name}` but it should not contain information about "
                f"`dataloader_idx` when `add_dataloader_idx=True`: surge adds the suffix itself when a stage has "
                f"several dataloaders; log the plain name, or pass add_dataloader_idx=False")
        if given["add_dataloader_idx"] and self.dataloader_idx is not None:
            name = f"{name}/dataloader_idx_{self.dataloader_idx}"
        options = dict(given, on_step=on_step, on_epoch=on_epoch, reduce_fx=reduce)
        metric = self.metrics.get((hook, name))
        if metric is None:
            metric = self.metrics[(hook, name)] = (_MetricObject if obj else _Metric)(name, hook, options)
        elif metric.options != options or isinstance(metric, _MetricObject) != obj:
            raise MisconfigurationError(_options_differ(name, hook, self.stage, options, metric.options,
                                                        obj, isinstance(metric, _MetricObject)))
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
        for m in self.metrics.values():
            value = m.epoch_value()
            if value is None:
                continue
            out.pop(m.name, None)  # the same name from a later hook wins, and keeps its place in the order
            out[m.name] = (value, m)
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
        device = strategy._collective_device() if hasattr(strategy, "_collective_device") else torch.device("cpu")
        mine = sorted((name, m.reduce, m.on_step, m.prog_bar, m.logger) for name, (_, m) in out.items() if m.sync_dist)
        what = f"the {self.stage} epoch-end reduction of the values logged with sync_dist=True"
        with strategy.collective(what):
            # Mostly every rank logged the same keys with the same options (or none): one small all_gather of
            # digests says so, and the lists themselves are gathered (pickled) only where they differ.
            everyone = [mine] if _same_on_every_rank(strategy, mine, device) else strategy.all_gather_object(mine)
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
            m = local[1] if local is not None else _Metric(name, "", dict(
                on_step=on_step, on_epoch=True, prog_bar=prog_bar, logger=logger, reduce_fx=reduce, sync_dist=True))
            dtype = local[0].dtype if local is not None else torch.float32
            target = local[0].device if local is not None else device
            synced[name] = (value.to(device=target, dtype=dtype), m)
        return synced

    def reset_metric_objects(self) -> None:
        """The epoch's values are out: reset the torchmetrics objects logged in it, as Lightning does."""
        for m in self.metrics.values():
            m.reset()

    def reset(self) -> None:
        self.metrics.clear()
        self._checked.clear()


def _same_on_every_rank(strategy, value, device: torch.device) -> bool:
    """Whether every rank holds the same ``value`` (by its ``repr``), from an all_gather of one 64-bit digest per
    rank. (An all_gather, as the pickled gather's first step is: a rank that meets another rank's all-reduce here,
    one rank having left its epoch early, times out with both places named instead of aborting on the mismatch.)"""
    digest = int.from_bytes(hashlib.blake2b(repr(value).encode(), digest_size=8).digest(), "big", signed=True)
    return len(set(strategy.all_gather(torch.tensor([digest], dtype=torch.int64, device=device)).view(-1).tolist())) == 1


def _levels(hook: str, name: str, on_step: Optional[bool], on_epoch: Optional[bool]) -> tuple[bool, bool]:
    """``self.log``'s on_step and on_epoch in ``hook``: the hook's defaults filled in, checked against what it allows."""
    kind = _LOG_LEVELS.get(hook)
    if kind is None:
        where = f"inside `{hook}`" if hook else "here"
        raise MisconfigurationError(
            f"You can't `self.log()` {where}: self.log({name!r}) cannot be called from {hook or 'outside the'}"
            f"{'()' if hook else ' Trainer hooks'}, which has no step or epoch to attach the value to. Log from a "
            f"step, a batch hook or an epoch hook, or write to the logger directly (`self.logger.log_metrics`)")
    per_step = kind == "step"
    on_step = per_step if on_step is None else on_step
    on_epoch = (not per_step) if on_epoch is None else on_epoch
    if kind == "epoch" and on_step:
        raise MisconfigurationError(
            f"You can't `self.log(on_step=True)` inside `{hook}`, must be one of (False,): self.log({name!r}, "
            f"on_step=True) cannot be used in {hook}(); there is no step there (drop on_step)")
    if kind == "epoch" and not on_epoch:
        raise MisconfigurationError(
            f"You can't `self.log(on_epoch=False)` inside `{hook}`, must be one of (True,): self.log({name!r}) "
            f"in {hook}() is an epoch value (drop on_epoch=False)")
    if not (on_step or on_epoch):
        raise MisconfigurationError(
            f"`self.log(on_step=False, on_epoch=False)` is not useful: self.log({name!r}) in {hook}() would go "
            f"nowhere (on_step and on_epoch are both False); set one of them to True")
    return on_step, on_epoch


def _options_differ(name: str, hook: str, stage: str, now: dict, before: dict, obj: bool, was_obj: bool) -> str:
    """The error for one name logged twice in one hook with different options."""
    if obj != was_obj:
        kinds = ("a torchmetrics Metric", "a tensor or number")
        return (f"You called `self.log({name}, ...)` twice in `{hook}` with different arguments: once with "
                f"{kinds[not was_obj]} and now with {kinds[not obj]}; log each under its own name")
    others = [k for k in now if k not in ("on_step", "on_epoch", "reduce_fx") and now[k] != before[k]]

    def says(options):
        parts = [f"on_step={options['on_step']}", f"on_epoch={options['on_epoch']}"]
        parts += [f"{k}={options[k]!r}" for k in others] + [f"reduce_fx={options['reduce_fx']!r}"]
        return ", ".join(parts)

    return (f"You called `self.log({name}, ...)` twice in `{hook}` with different arguments: self.log({name!r}) was "
            f"called with {says(now)} but earlier in this {stage} epoch with {says(before)}; use the same options "
            f"every time in one hook (another hook may log the same name with options of its own)")


def _reduce_name(reduce_fx: Union[str, Callable], name: str) -> str:
    """``reduce_fx`` as one of "mean", "sum", "max", "min" (from a string, a torch function or a builtin)."""
    if isinstance(reduce_fx, str) and reduce_fx.lower() in _REDUCE_NAMES:
        return _REDUCE_NAMES[reduce_fx.lower()]
    try:
        if reduce_fx in _REDUCE_FNS:
            return _REDUCE_FNS[reduce_fx]
    except TypeError:  # unhashable: not one of them
        pass
    raise MisconfigurationError(
        f"self.log({name!r}): reduce_fx must be one of 'mean', 'sum', 'max', 'min' (or torch.mean/sum/max/min, or "
        f"the builtins sum/max/min), got {reduce_fx!r}. Only `self.log(..., reduce_fx={{min,max,mean,sum}})` are "
        f"supported: for another reduction, log a `torchmetrics.Metric` that computes it"
    )


def _shown(value) -> str:
    text = str(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _as_tensor(value, name: str) -> torch.Tensor:
    """``value`` as a 0-dim floating tensor (float32 or float64), or the error Lightning users know."""
    if isinstance(value, torch.Tensor):
        if value.ndim == 0 and (value.dtype is torch.float32 or value.dtype is torch.float64):  # a loss, mostly
            return value
        if value.numel() != 1:
            raise SurgeError(
                f"self.log({name!r}) needs a single number, got a tensor of shape {tuple(value.shape)}: "
                f"`self.log({name}, ...)` was called, but the tensor must have a single element. You can try "
                f"doing `self.log({name}, value.mean())` (or another reduction)")
        if value.dim():
            value = value.reshape(())
        # bf16/fp16 and integers would round or truncate in the epoch's sum: keep them in float32 at least.
        return value if value.dtype in (torch.float32, torch.float64) else value.to(_default_float())
    if not isinstance(value, numbers.Number):
        if isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
            raise SurgeError(f"`self.log({name}, {_shown(value)})` was called, but nested dictionaries cannot be "
                             f"logged: self.log({name!r}) needs a number, a one-element tensor or a torchmetrics Metric")
        raise SurgeError(
            f"`self.log({name}, {_shown(value)})` was called, but `{type(value).__name__}` values cannot be logged: "
            f"self.log({name!r}) needs a number or a one-element tensor, got {type(value).__name__} (or a "
            f"torchmetrics Metric; for several values use self.log_dict)")
    return torch.tensor(float(value), dtype=_default_float())
