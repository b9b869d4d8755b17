"""Preemption: on SIGTERM/SIGUSR1, finish the step, save a checkpoint, exit so the job is requeued.

Schedulers (SLURM, Kubernetes, cloud spot instances) warn a job with a signal some seconds before they
kill it. surge notes the signal, lets the current optimizer step finish, writes ``last.ckpt`` (with the
exact data position, so ``fit(ckpt_path="last")`` continues where it stopped), asks SLURM to requeue
the job when it runs under SLURM, and exits with ``requeue_exit_code``. If no step boundary comes within
``preemption_grace`` seconds of the signal (a stuck step, a hung collective), the process exits with that
code without saving: the checkpoints already on disk are whole, and a job that ignored the signal would
only be killed later, with nothing gained.
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Optional

from .utils import MisconfigurationError, rank_zero_info

# Across processes the flag is agreed on in a small all-reduce about this often (in seconds of training):
# the interval in steps follows the step time each rank measures, and the ranks agree on it in that same
# all-reduce. When one step is this long or longer, the all-reduce is waited for at once (its cost is
# nothing next to such a step) and the decision comes at the first or second step boundary after the
# signal; otherwise it runs in the background and is read at the next check.
_CHECK_EVERY_S = 0.5
_BLOCKING_STEP_S = 0.25
_MAX_INTERVAL = 100  # steps; bounds the latency when steps suddenly become slower than measured
# Set by ``python -m surge.torchrun`` for its workers: where each one says it left with the requeue code.
REPORT_DIR_ENV = "SURGE_EXIT_REPORT_DIR"

_ACCEPTED = ("a signal name ('SIGTERM', 'SIGUSR1'), a number or a signal.Signals, or a list of them "
             "(empty or None: none)")


def parse_signals(value) -> list:
    """``preemption_signals`` as a list of :class:`signal.Signals`, or a :class:`MisconfigurationError`
    naming the argument, what was given and what is accepted."""
    if value is None:
        return []
    items = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
    found = []
    for item in items:
        sig, problem = _one_signal(item)
        if problem:
            raise MisconfigurationError(f"preemption_signals={value!r}: {item!r} {problem}; give {_ACCEPTED}")
        if sig not in found:
            found.append(sig)
    return found


def _one_signal(item):
    """(the signal, None) or (None, what is wrong with ``item``)."""
    if isinstance(item, bool) or not isinstance(item, (str, int)):
        return None, f"is a {type(item).__name__}, not a signal name or number"
    if isinstance(item, str):
        name = item.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if name not in signal.Signals.__members__:
            return None, "is not a signal name on this system"
        sig = signal.Signals[name]
    else:
        try:
            sig = signal.Signals(item)
        except ValueError:
            return None, "is not a signal number on this system"
    if sig in {getattr(signal, n) for n in ("SIGKILL", "SIGSTOP") if hasattr(signal, n)}:
        return None, f"is {sig.name}, which cannot be caught (the process just ends)"
    return sig, None


def check_grace(value) -> Optional[float]:
    """``preemption_grace``: seconds > 0, or None (wait for the step boundary however long it takes)."""
    if value is None or value == math.inf:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise MisconfigurationError(f"preemption_grace must be a number of seconds > 0, or None to wait for the "
                                    f"step boundary however long it takes; got {value!r}")
    return float(value)


def end_worker_processes() -> None:
    """Kill this process's daemonic ``multiprocessing`` children (DataLoader workers) before an ``os._exit``
    or a signal's default action ends it. A normal exit ends them (multiprocessing terminates daemonic
    children at exit); those paths do not, and a worker left behind (stuck in ``__getitem__``, say) lives on
    with parent PID 1 and keeps the job's stdout and stderr open."""
    import multiprocessing

    for child in multiprocessing.active_children():
        if child.daemon:
            try:
                child.kill()
            except (OSError, ValueError):  # gone meanwhile, or closed: nothing left to end
                pass


class PreemptionHandler:
    """Catches ``signals`` during fit and tells the Trainer when to save and leave.

    Arguments:
        signals: see :func:`parse_signals`.
        exit_code: the exit code after a preemption save (or after the grace period without one).
        grace: seconds from the first signal to the step boundary that acts on it; when none comes in time,
            the process says so in one line and exits with ``exit_code`` without saving. None: wait forever.
    """

    def __init__(self, signals, exit_code: int, grace: Optional[float] = 30.0):
        self.signals = parse_signals(signals)
        if isinstance(exit_code, bool) or not isinstance(exit_code, int) or not 0 <= exit_code <= 255:
            raise MisconfigurationError(f"requeue_exit_code must be an int in [0, 255], got {exit_code!r}")
        self.exit_code = exit_code
        self.grace = check_grace(grace)
        self.received: Optional[signal.Signals] = None
        self._received_at = 0.0
        self.acted = False  # a step boundary acted on the signal: the save (if any) is under way
        self._previous: dict = {}
        self._distributed = False  # several processes: the flag is agreed on (set by install)
        self._pending = None  # (work, tensor) of the all-reduce in flight across processes
        # The first global step at which ``due`` has anything to decide: the Trainer does not call it before.
        # One process: only after a signal came (set by the handler); several: the next agreed check.
        self.next_check: float = math.inf
        self._make_events()

    def _make_events(self) -> None:
        self._lock = threading.Lock()  # the grace thread never exits in the middle of acted being set
        self._noticed = threading.Event()  # a signal came (or fit ends): the grace thread starts counting
        self._settled = threading.Event()  # acted on, or fit ended: the grace thread has nothing to do

    def __getstate__(self) -> dict:
        # ddp_spawn pickles the Trainer for its workers: locks and events cannot travel, and are made anew.
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_noticed", "_settled", "_pending")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _pending=None)
        self._make_events()

    # ------------------------------------------------------------------ during fit
    def install(self, distributed: bool = False) -> None:
        self._distributed = distributed
        self._pending, self.acted = None, False
        self._last, self._interval, self._blocking = None, 1, False
        self.next_check = 0 if distributed or self.received is not None else math.inf
        if threading.current_thread() is not threading.main_thread() or not self.signals:
            return  # signal handlers can only be set from the main thread
        self._make_events()
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._note)
        if self.received is not None:
            self._noticed.set()  # noted at the end of an earlier fit, never acted on: the grace runs on
        if self.grace is not None:
            threading.Thread(target=self._watch_grace, args=(self._noticed, self._settled),
                             name="surge-preemption-grace", daemon=True).start()

    def uninstall(self, wait: bool = True) -> None:
        if self._pending is not None and wait:
            self._pending[0].wait()  # leave no collective in flight for the next stage
        self._pending = None  # after a failure a peer may be gone: do not wait for it
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        # After the handlers are gone: _note never runs inside these set() calls (an Event's lock is not reentrant).
        self._settled.set()
        self._noticed.set()  # the grace thread ends

    def _note(self, signum, frame) -> None:
        if self.received is not None:
            # A second signal means "now" (a rank stuck in a collective never reaches the step boundary
            # where the first one is acted on): the signal's own action, usually termination.
            end_worker_processes()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received, self._received_at = signal.Signals(signum), time.monotonic()
        if not self._distributed:  # several processes act at their next agreed check, all at the same step
            self.next_check = 0
        self._noticed.set()  # from a signal handler: an Event, whose lock only the grace thread takes

    def due(self, trainer) -> bool:
        """Whether every process agrees to stop now (called only between optimizer steps)."""
        decided = self.received is not None if not self._distributed else self._agree(trainer)
        if decided:
            with self._lock:
                self.acted = True
                self._settled.set()
        return decided

    # ------------------------------------------------------------------ across processes
    def _agree(self, trainer) -> bool:
        step = trainer.global_step
        if step < self.next_check:
            return False
        proposal = self._propose(step, time.monotonic())
        pending, self._pending = self._pending, None
        if pending is not None and self._read(pending):
            return True  # every rank read the same result: they all stop here
        posted = self._post(trainer, proposal)
        self._pending = None if self._blocking else posted
        if self._blocking and self._read(posted):
            return True
        self.next_check = step + self._interval
        return False

    def _propose(self, step: int, now: float) -> tuple:
        """This rank's flag, and the check interval (steps) and mode its measured step time asks for."""
        flag = 1 if self.received is not None else 0
        last, self._last = self._last, (step, now)
        if last is None:
            # Nothing measured yet: check again at the next step. In the background, like a short step's check: a
            # fit's first steps are no measure of its step time, and waiting on every rank here cost the ranks'
            # start-up skew (1-4 ms a fit). A slow run waits from its third check on: a decision still comes
            # within two steps of the signal.
            return flag, 1, 0
        step_s = (now - last[1]) / max(1, step - last[0])
        interval = _MAX_INTERVAL if step_s <= 0 else max(1, min(_MAX_INTERVAL, int(_CHECK_EVERY_S / step_s)))
        return flag, interval, int(step_s >= _BLOCKING_STEP_S)

    def _post(self, trainer, proposal: tuple):
        import torch
        import torch.distributed as dist

        flag, interval, blocking = proposal
        # One MAX all-reduce: any rank's flag, the smallest interval (as -interval), any rank's blocking.
        values = torch.tensor([flag, -interval, blocking], dtype=torch.int64,
                              device=trainer.strategy._collective_device())
        return dist.all_reduce(values, op=dist.ReduceOp.MAX, async_op=True), values

    def _read(self, posted) -> bool:
        work, values = posted
        work.wait()
        flag, neg_interval, blocking = values.tolist()
        self._interval, self._blocking = -neg_interval, bool(blocking)
        return bool(flag)

    # ------------------------------------------------------------------ the grace period
    def _watch_grace(self, noticed: threading.Event, settled: threading.Event) -> None:
        noticed.wait()
        if settled.wait(max(0.0, self._received_at + self.grace - time.monotonic())):
            return
        while True:
            with self._lock:
                if settled.is_set():
                    return
                if not _main_thread_is_saving():
                    self._give_up()
            time.sleep(0.05)  # a checkpoint being written when the grace ends is let finish

    def _give_up(self) -> None:
        """No step boundary within the grace period: leave without saving (called with the lock held)."""
        rank = f" (rank {os.environ['RANK']})" if self._distributed and "RANK" in os.environ else ""
        name = self.received.name if self.received is not None else "a signal"
        print(f"surge{rank}: got {name} but no step boundary came within preemption_grace={self.grace:g} s (a "
              f"step, a validation loop or a collective may be stuck), so it did not save; the checkpoints already "
              f"on disk are intact; exiting with code {self.exit_code} for a requeue", file=sys.stderr, flush=True)
        sys.stdout.flush()
        self.report(saved=False)
        end_worker_processes()
        os._exit(self.exit_code)

    # ------------------------------------------------------------------ after the save
    def report(self, saved: bool) -> None:
        """Under ``python -m surge.torchrun``: tell the agent this worker leaves with the requeue code."""
        folder = os.environ.get(REPORT_DIR_ENV)
        if not folder:
            return
        name = f"attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}-rank{os.environ.get('RANK', os.getpid())}"
        try:
            with open(os.path.join(folder, name), "w") as f:
                f.write(f"{self.exit_code} {'saved' if saved else 'unsaved'}")
        except OSError:
            pass  # the agent then reports the signal's own code

    def requeue(self, trainer) -> None:
        """Under SLURM, put the job back in the queue (rank 0 only); under surge.torchrun, tell the agent."""
        self.report(saved=True)
        job = os.environ.get("SLURM_JOB_ID")
        if job and trainer.is_global_zero and shutil.which("scontrol"):
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            rank_zero_info(f"surge: scontrol requeue {job}: {'ok' if result.returncode == 0 else result.stderr.strip()}")


def _main_thread_is_saving() -> bool:
    """Whether the main thread is inside one of surge's ``save_checkpoint`` functions (the Trainer's, a
    strategy's, the atomic file writer's). Read from its stack: the grace thread only looks when the
    grace period is over, and a flag kept by every save path would cost each save for this one case."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        if frame.f_code.co_name == "save_checkpoint" and str(frame.f_globals.get("__name__", "")).startswith("surge"):
            return True
        frame = frame.f_back
    return False
