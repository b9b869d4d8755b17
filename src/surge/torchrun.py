"""``python -m surge.torchrun``: torch's elastic launcher (torchrun), with an exit code a scheduler can requeue on.

torchrun's agent turns a SIGTERM into an exception, stops its workers (which save a checkpoint and exit
with surge's requeue code, 143 by default) and then exits 1, so a scheduler that requeues a job ending
with 143 sees a failure. This runs torch's own launcher, ``torch.distributed.run``, in this process with
the same arguments; only when the agent is ended by a signal does it choose the exit code: the workers'
requeue code when every worker that reported left with it, else 128 + the signal's number (what a shell
reports for a process that signal ended). Rendezvous, restarts and a failed worker's error and exit code
are torchrun's own.

Example::

    python -m surge.torchrun --nproc-per-node 4 train.py --lr 0.1      # instead of torchrun ...
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Optional

from .preemption import REPORT_DIR_ENV


def main(argv: Optional[list] = None) -> int:
    """Run torchrun with ``argv`` (default: this command's arguments); return the exit code."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing import SignalException

    # The workers inherit the agent's environment: each one that leaves with the requeue code writes a
    # line here (surge.preemption.PreemptionHandler.report).
    folder = tempfile.mkdtemp(prefix="surge-torchrun-")
    os.environ[REPORT_DIR_ENV] = folder
    try:
        torchrun.main(argv)
        return 0
    except SignalException as err:
        return _after_signal(err.sigval, folder)
    finally:
        os.environ.pop(REPORT_DIR_ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def _after_signal(sig, folder: str) -> int:
    """The exit code after the agent got ``sig`` and stopped its workers, said in one line."""
    reports = {}
    for name in os.listdir(folder):  # "attempt<N>-rank<R>": only the last attempt's workers count
        attempt = int(name.split("-")[0][len("attempt"):])
        with open(os.path.join(folder, name)) as f:
            code, what = f.read().split()
        reports.setdefault(attempt, []).append((int(code), what))
    latest = reports[max(reports)] if reports else []
    codes = {code for code, _ in latest}
    if len(codes) == 1:
        code = codes.pop()
        saved = sum(what == "saved" for _, what in latest)
        unsaved = f", {len(latest) - saved} left without saving (their last checkpoint is intact)" \
            if saved < len(latest) else ""
        print(f"surge.torchrun: got {sig.name}; {saved} workers saved a checkpoint and exited with {code}{unsaved}; "
              f"exiting with {code}", file=sys.stderr, flush=True)
        return code
    code = 128 + int(sig)
    what = "no worker reported a preemption exit" if not latest else f"the workers exited with {sorted(codes)}"
    print(f"surge.torchrun: got {sig.name}; {what}; exiting with {code} (128 + {sig.name})",
          file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
