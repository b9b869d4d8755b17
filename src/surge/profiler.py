"""Profilers: where the time of a run goes, per hook and per stage of a training step.

Switch one on with a Trainer argument::

    surge.Trainer(profiler="simple")     # wall time per action, a table printed at the end (rank 0)
    surge.Trainer(profiler="advanced")   # cProfile per action: the functions that took the time
    surge.Trainer(profiler="pytorch")    # torch.profiler traces for TensorBoard / chrome://tracing

or pass an instance to set options: ``surge.Trainer(profiler=PyTorchProfiler(active=5))``.

The Trainer wraps each hook it calls (``on_train_batch_end`` and so on, callbacks and module
together) and the stages of a training batch (``run_training_batch``, ``training_step``,
``backward``, ``optimizer_step``) in ``profiler.profile(name)``. Without a profiler that costs one
``is None`` test and a shared ``nullcontext``.

Times are host wall-clock times. On a GPU the host queues work and runs ahead, so a stage's time
is the time to *launch* it, until something waits for the device (``.item()``, a logged metric
being written, the optimizer's step under some strategies); ``"pytorch"`` shows device time too.
"""
from __future__ import annotations

import cProfile
import io
import os
import pstats
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from typing import Any, Optional, Union

from .utils import MisconfigurationError

# One shared, stateless context: ``with NO_PROFILE:`` costs no allocation.
NO_PROFILE = nullcontext()


class Profiler:
    """Base class: records actions between :meth:`start` and :meth:`stop`; :meth:`summary` reports.

    ``dirpath`` / ``filename``: where :meth:`describe` also writes the report (default: only print
    it; ``PyTorchProfiler`` always writes its traces to ``dirpath`` or ``<log_dir>/profiler``).

    Example (your own)::

        class CountingProfiler(Profiler):
            def __init__(self):
                super().__init__()
                self.counts = collections.Counter()
            def start(self, name): self.counts[name] += 1
            def stop(self, name): pass
            def summary(self): return str(self.counts)
    """

    def __init__(self, dirpath: Optional[str] = None, filename: Optional[str] = None) -> None:
        self.dirpath = os.fspath(dirpath) if dirpath is not None else None
        self.filename = filename
        self._trainer = None
        self._stage: Optional[str] = None
        self._active = False  # between setup and teardown

    @contextmanager
    def profile(self, name: str):
        """Time the ``with`` block as action ``name``."""
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def start(self, name: str) -> None:
        raise NotImplementedError

    def stop(self, name: str) -> None:
        raise NotImplementedError

    def summary(self) -> str:
        """The report, as text."""
        raise NotImplementedError

    # ------------------------------------------------------------------ run lifecycle (the Trainer calls these)
    def setup(self, trainer, stage: str) -> None:
        """A stage (fit, validate, test, predict) begins; ``trainer.log_dir`` is final now."""
        self._trainer = trainer
        self._stage = stage
        self._active = True

    def teardown(self, stage: str) -> None:
        """The stage ended (also after an error): print and save the report on global rank 0."""
        if self._active:
            self._active = False
            self.describe()

    def describe(self) -> None:
        trainer = self._trainer
        if trainer is not None and not trainer.is_global_zero:
            return
        text = self.summary()
        if not text:
            return
        print(text, flush=True)
        if self.dirpath is not None or self.filename is not None:
            path = self._report_path()
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text + "\n")

    def _out_dir(self) -> str:
        if self.dirpath is not None:
            return self.dirpath
        base = self._trainer.log_dir if self._trainer is not None else os.getcwd()
        return os.path.join(base, "profiler")

    def _report_path(self) -> str:
        name = self.filename or f"{type(self).__name__.lower()}-{self._stage or 'run'}"
        return os.path.join(self._out_dir(), name if name.endswith(".txt") else name + ".txt")


class PassThroughProfiler(Profiler):
    """A profiler that records nothing. Passed to the Trainer it is the same as ``profiler=None``:
    ``trainer.profiler`` is then ``None`` and nothing is timed (no cost per step)."""

    def start(self, name: str) -> None:
        pass

    def stop(self, name: str) -> None:
        pass

    def summary(self) -> str:
        return ""


class SimpleProfiler(Profiler):
    """Wall time per action: calls, total and mean seconds, and share of the stage's time.

    Nested actions (``training_step`` inside ``run_training_batch``) each count their own full
    time, so the shares add up to more than 100%.

    Example::

        trainer = surge.Trainer(profiler="simple")
        trainer.fit(model)                               # prints the table at the end
        trainer.profiler.recorded["training_step"]       # list of seconds, one per call
    """

    def __init__(self, dirpath: Optional[str] = None, filename: Optional[str] = None) -> None:
        super().__init__(dirpath, filename)
        self.recorded: dict[str, list[float]] = defaultdict(list)
        self._open: dict[str, list[float]] = defaultdict(list)  # a stack per name: hooks may nest
        self._t0 = time.perf_counter()

    def setup(self, trainer, stage: str) -> None:
        super().setup(trainer, stage)
        self.recorded.clear()
        self._open.clear()
        self._t0 = time.perf_counter()

    def start(self, name: str) -> None:
        self._open[name].append(time.perf_counter())

    def stop(self, name: str) -> None:
        stack = self._open.get(name)
        if stack:
            self.recorded[name].append(time.perf_counter() - stack.pop())

    def summary(self) -> str:
        if not self.recorded:
            return ""
        total = max(time.perf_counter() - self._t0, 1e-9)
        rows = sorted(((sum(d), len(d), name) for name, d in self.recorded.items()), reverse=True)
        width = max(len("Action"), *(len(name) for _, _, name in rows))
        lines = [f"Profiler report ({self._stage or 'run'}): {total:.3f} s in all",
                 f"{'Action':<{width}}  {'calls':>7}  {'total s':>9}  {'mean ms':>9}  {'% of run':>8}"]
        lines.append("-" * len(lines[-1]))
        for seconds, calls, name in rows:
            lines.append(f"{name:<{width}}  {calls:>7}  {seconds:>9.4f}  {1000 * seconds / calls:>9.4f}  "
                         f"{100 * seconds / total:>7.1f}%")
        return "\n".join(lines)


class AdvancedProfiler(Profiler):
    """cProfile per action: for each, the ``line_count`` functions with the most cumulative time.

    A nested action pauses its parent's profile (cProfile allows one at a time), so each
    action's report holds only its own calls.

    Example::

        surge.Trainer(profiler=AdvancedProfiler(dirpath="prof", filename="fit"))   # also prof/fit.txt
    """

    def __init__(self, dirpath: Optional[str] = None, filename: Optional[str] = None, line_count: int = 20) -> None:
        super().__init__(dirpath, filename)
        self.line_count = line_count
        self.profiles: dict[str, cProfile.Profile] = {}
        self._stack: list[cProfile.Profile] = []

    def setup(self, trainer, stage: str) -> None:
        super().setup(trainer, stage)
        self.profiles.clear()
        self._stack.clear()

    def start(self, name: str) -> None:
        if self._stack:
            self._stack[-1].disable()
        prof = self.profiles.get(name)
        if prof is None:
            prof = self.profiles[name] = cProfile.Profile()
        self._stack.append(prof)
        prof.enable()

    def stop(self, name: str) -> None:
        if not self._stack:
            return
        self._stack.pop().disable()
        if self._stack:
            self._stack[-1].enable()

    def teardown(self, stage: str) -> None:
        while self._stack:  # an error left actions open
            self._stack.pop().disable()
        super().teardown(stage)

    def summary(self) -> str:
        parts = []
        for name, prof in self.profiles.items():
            out = io.StringIO()
            try:
                stats = pstats.Stats(prof, stream=out)
            except TypeError:  # created but never recorded anything
                continue
            stats.strip_dirs().sort_stats("cumulative").print_stats(self.line_count)
            parts.append(f"Profile of action: {name}\n{out.getvalue()}")
        return "\n".join(parts)


class PyTorchProfiler(Profiler):
    """``torch.profiler`` over a few training steps, written as traces that TensorBoard's profile
    plugin (``tensorboard --logdir <log_dir>/profiler``) and chrome://tracing / Perfetto open.

    The schedule skips ``wait`` steps, warms up for ``warmup``, records ``active`` and repeats
    ``repeat`` times (0: for the whole run), so it profiles a few steps, not the run. Each action
    is a named range (``record_function``) in the trace. Evaluation stages are not profiled.

    Args:
        dirpath: trace folder (default ``<log_dir>/profiler``); one ``*.pt.trace.json`` per cycle.
        wait, warmup, active, repeat: the ``torch.profiler.schedule``.
        record_shapes, profile_memory, with_stack: passed to ``torch.profiler.profile``.
        row_limit: rows of the key-averages table printed at the end.

    Example::

        surge.Trainer(profiler=PyTorchProfiler(wait=2, active=5), max_steps=20)
    """

    def __init__(self, dirpath: Optional[str] = None, filename: Optional[str] = None, *, wait: int = 1,
                 warmup: int = 1, active: int = 3, repeat: int = 1, record_shapes: bool = False,
                 profile_memory: bool = False, with_stack: bool = False, row_limit: int = 20) -> None:
        super().__init__(dirpath, filename)
        for key, value, low in (("wait", wait, 0), ("warmup", warmup, 0), ("active", active, 1), ("repeat", repeat, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise MisconfigurationError(f"PyTorchProfiler({key}={value!r}): must be an int >= {low}")
        self.wait, self.warmup, self.active, self.repeat = wait, warmup, active, repeat
        self.record_shapes, self.profile_memory, self.with_stack = record_shapes, profile_memory, with_stack
        self.row_limit = row_limit
        self._prof = None
        self._ranges: dict[str, list] = defaultdict(list)
        self.trace_dir: Optional[str] = None
        self._table = ""

    def setup(self, trainer, stage: str) -> None:
        super().setup(trainer, stage)
        self._table = ""
        if stage != "fit":
            return
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.trace_dir = self._out_dir()
        worker = f"rank{trainer.global_rank}" if trainer is not None else None
        self._prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=self.wait, warmup=self.warmup, active=self.active, repeat=self.repeat),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(self.trace_dir, worker_name=worker),
            record_shapes=self.record_shapes, profile_memory=self.profile_memory, with_stack=self.with_stack)
        self._prof.__enter__()

    def start(self, name: str) -> None:
        if self._prof is None:
            return
        import torch

        rf = torch.autograd.profiler.record_function(name)
        rf.__enter__()
        self._ranges[name].append(rf)

    def stop(self, name: str) -> None:
        if self._prof is None:
            return
        stack = self._ranges.get(name)
        if stack:
            stack.pop().__exit__(None, None, None)
        if name == "run_training_batch":  # one schedule step per training batch
            self._prof.step()

    def teardown(self, stage: str) -> None:
        prof, self._prof = self._prof, None
        self._ranges.clear()
        if prof is not None:
            prof.__exit__(None, None, None)
            try:
                sort = "cuda_time_total" if any(getattr(a, "name", "") == "CUDA" for a in prof.activities) \
                    else "cpu_time_total"
                self._table = prof.key_averages().table(sort_by=sort, row_limit=self.row_limit)
            except Exception:  # no step was recorded (a run shorter than wait + warmup)
                self._table = ""
        super().teardown(stage)

    def summary(self) -> str:
        if not self._table:
            return ""
        return f"PyTorch profiler ({self._stage}); traces in {self.trace_dir}\n{self._table}"


_BY_NAME = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}


def resolve_profiler(profiler: Union[str, Profiler, None]) -> Optional[Profiler]:
    """The Trainer's ``profiler`` argument as an instance (``None``: no profiling)."""
    if profiler is None or isinstance(profiler, PassThroughProfiler):
        return None
    if isinstance(profiler, Profiler):
        return profiler
    if isinstance(profiler, str) and profiler.lower() in _BY_NAME:
        return _BY_NAME[profiler.lower()]()
    raise MisconfigurationError(
        f"profiler={profiler!r}: choose None, 'simple', 'advanced', 'pytorch' or a surge.profiler.Profiler instance")


def profile_or_nothing(profiler: Optional[Profiler], name: str) -> Any:
    """``profiler.profile(name)``, or the shared no-op context when there is no profiler."""
    return NO_PROFILE if profiler is None else profiler.profile(name)
