"""How the local ranks that surge starts share this machine's CPU: torch threads per rank, and on a CPU
run each rank's own physical cores.

Several full-size thread pools on the same cores slow every rank down, so each rank gets ``cores // local
ranks`` torch threads (:func:`share_threads`) unless the user chose a number (``OMP_NUM_THREADS``,
``torch.set_num_threads``). Where it shares the threads on a CPU run, the launcher also binds each rank, every
thread of it, to a block of whole physical cores (:func:`core_blocks`, :func:`bind_to_cpus`): the OS then no
longer moves the ranks' threads between cores. ``SURGE_BIND_CORES=0`` leaves the placement to the OS.
"""
from __future__ import annotations

import os
from typing import Optional

from .utils import MisconfigurationError


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one). In a local rank that
    surge's launcher bound to its own cores: the cores all the local ranks share (``SURGE_NODE_CPUS``), so
    that every rank reads the same count (``devices=-1``, the warnings) as rank 0 did before binding."""
    shared = os.environ.get("SURGE_NODE_CPUS")
    if shared and shared.isdigit() and int(shared) > 0:
        return int(shared)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _physical_cores() -> Optional[int]:
    """Physical cores of the machine from /proc/cpuinfo (torch's default thread count), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    cores, physical = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            cores.add((physical, value.strip()))
    return len(cores) or None


def share_threads(local_processes: int) -> Optional[int]:
    """How many torch threads each of ``local_processes`` ranks on this machine should use, or None to
    leave the count alone: one process, ``OMP_NUM_THREADS`` set, or a count that is not torch's default
    (the user called ``torch.set_num_threads``). Several full-size thread pools on the same cores slow
    every rank down; torchrun makes the same choice (it sets one thread per rank)."""
    if local_processes <= 1 or os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    if torch.get_num_threads() not in {os.cpu_count(), _physical_cores(), usable_cores()}:
        return None
    return max(1, usable_cores() // local_processes)


def core_blocks(local_processes: int) -> Optional[list[list[int]]]:
    """Disjoint sets of this process's CPUs, one per local rank: whole physical cores (a core's hyperthreads
    stay together), as even as they divide. None where the OS cannot bind a process or there are fewer
    physical cores than processes."""
    if not hasattr(os, "sched_setaffinity") or local_processes <= 1:
        return None
    cores: dict[str, list[int]] = {}
    for cpu in sorted(os.sched_getaffinity(0)):
        cores.setdefault(_core_of(cpu), []).append(cpu)
    if len(cores) < local_processes:
        return None
    per, extra = divmod(len(cores), local_processes)
    groups, start = list(cores.values()), 0
    blocks = []
    for rank in range(local_processes):
        end = start + per + (rank < extra)
        blocks.append(sorted(cpu for core in groups[start:end] for cpu in core))
        start = end
    return blocks


def _core_of(cpu: int) -> str:
    """The physical core of a logical CPU, as the list of its hyperthreads (Linux), else the CPU itself."""
    try:
        with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
            return f.read().strip()
    except OSError:
        return str(cpu)


def bind_to_cpus(cpus: list[int], pid: Optional[int] = None) -> None:
    """Run the process ``pid`` (a child just started, whose later threads inherit it), or every thread of this
    process, on ``cpus`` only."""
    if pid is not None:
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:  # it has already exited: the launcher's watch reports that
            pass
        return
    try:
        threads = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the calling thread, and those it starts from now on
        threads = [0]
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # a thread that has just ended
            pass


def _cpu_list(cpus: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2,5``."""
    runs: list[list[int]] = []
    for cpu in cpus:
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def share_machine(local_processes: int, env: dict, here: bool, cpu: bool) -> Optional[list[list[int]]]:
    """Give the ranks started with ``env`` (and this process when it is one of them: ``here``) their share
    of the cores, and say so once. On a CPU run each rank also gets its own cores (:func:`core_blocks`)
    unless ``SURGE_BIND_CORES=0``; returns them, for the caller to bind each rank to its block."""
    bind = os.environ.get("SURGE_BIND_CORES", "1").strip() or "1"
    if bind not in ("0", "1"):
        raise MisconfigurationError(f"SURGE_BIND_CORES must be 0 (leave the local ranks' placement on the cores to "
                                    f"the OS) or 1 (each local CPU rank on its own cores, the default), got {bind!r}")
    threads = share_threads(local_processes)
    if threads is None:
        return None
    blocks = core_blocks(local_processes) if cpu and bind == "1" else None
    if blocks:  # whole cores may divide unevenly: no rank runs more threads than its block has CPUs
        threads = min(threads, *(len(b) for b in blocks))
        env["SURGE_NODE_CPUS"] = str(usable_cores())
    if here:
        import torch

        torch.set_num_threads(threads)
    env["OMP_NUM_THREADS"] = str(threads)
    ranks = ", ".join(f"local rank {r} on CPU {_cpu_list(b)}" for r, b in enumerate(blocks or ()))
    where = f"; each on its own cores: {ranks} (SURGE_BIND_CORES=0 leaves the placement to the OS)" if blocks else ""
    print(f"surge: {local_processes} local processes on {usable_cores()} CPU cores: {threads} torch thread(s) each "
          f"(set OMP_NUM_THREADS to choose another number){where}", flush=True)
    return blocks
