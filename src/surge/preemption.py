"""Preemption: on SIGTERM/SIGUSR1, finish the step, save a checkpoint, exit so the job is requeued.

Schedulers (SLURM, Kubernetes, cloud spot instances) warn a job with a signal some seconds before they
kill it. surge notes the signal, lets the current optimizer step finish, writes ``last.ckpt`` (with the
exact data position, so ``fit(ckpt_path="last")`` continues where it stopped), asks SLURM to requeue
the job when it runs under SLURM, and exits with ``requeue_exit_code``.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from typing import Optional

from .utils import MisconfigurationError, rank_zero_info

# Across processes the flag is agreed on with a background collective launched every N steps.
DISTRIBUTED_CHECK_EVERY = 10


class PreemptionHandler:
    """Catches ``signals`` during fit and tells the Trainer when to save and leave."""

    def __init__(self, signals, exit_code: int):
        names = [signals] if isinstance(signals, str) else list(signals or ())
        self.signals = []
        for name in names:
            sig = getattr(signal, str(name), None) if not isinstance(name, int) else name
            if sig is None:
                raise MisconfigurationError(f"preemption_signals: {name!r} is not a signal name (e.g. 'SIGTERM', 'SIGUSR1')")
            self.signals.append(signal.Signals(sig))
        if isinstance(exit_code, bool) or not isinstance(exit_code, int) or not 0 <= exit_code <= 255:
            raise MisconfigurationError(f"requeue_exit_code must be an int in [0, 255], got {exit_code!r}")
        self.exit_code = exit_code
        self.received: Optional[signal.Signals] = None
        self._previous: dict = {}
        self._pending = None  # (work, tensor) of the all-reduce in flight across processes
        self._distributed = False  # several processes: the flag is agreed on (set by install)

    def install(self, distributed: bool = False) -> None:
        self._distributed = distributed
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._note)

    def uninstall(self, wait: bool = True) -> None:
        if self._pending is not None and wait:
            self._pending[0].wait()  # leave no collective in flight for the next stage
        self._pending = None  # after a failure a peer may be gone: do not wait for it
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _note(self, signum, frame) -> None:
        if self.received is not None:
            # A second signal means "now" (a rank stuck in a collective never reaches the step boundary
            # where the first one is acted on): the signal's own action, usually termination.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signal.Signals(signum)

    def due(self, trainer) -> bool:
        """Whether every process agrees to stop now (called only between optimizer steps)."""
        if not self._distributed:
            return self.received is not None
        if trainer.global_step % DISTRIBUTED_CHECK_EVERY:
            return False
        # Every N steps each rank contributes its flag to an all-reduce that runs in the background and is
        # read N steps later, at the same step on every rank: the decision is shared without a wait.
        import torch
        import torch.distributed as dist

        decided = False
        if self._pending is not None:
            work, flag = self._pending
            work.wait()
            decided = bool(flag.item())
        flag = torch.tensor([1 if self.received is not None else 0], dtype=torch.int32,
                            device=trainer.strategy._collective_device())
        self._pending = (dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True), flag)
        return decided

    def requeue(self, trainer) -> None:
        """Under SLURM, put the job back in the queue (rank 0 only)."""
        job = os.environ.get("SLURM_JOB_ID")
        if job and trainer.is_global_zero and shutil.which("scontrol"):
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            rank_zero_info(f"surge: scontrol requeue {job}: {'ok' if result.returncode == 0 else result.stderr.strip()}")
