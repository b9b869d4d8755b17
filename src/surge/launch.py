"""How the processes of a run start, and where each one learns its rank.

Three ways, detected from the environment (:func:`detect_environment`):

* **plain** ``python train.py`` with ``devices=N``: this process becomes local rank 0 and starts the
  same command again for local ranks 1..N-1 (:class:`LocalLauncher`). Each child gets RANK, LOCAL_RANK,
  WORLD_SIZE, NODE_RANK, MASTER_ADDR and MASTER_PORT in its environment, so when it reaches the Trainer
  it sees an "already launched" environment and starts nothing.
* **torchrun** (``torchrun --nproc-per-node N train.py``): RANK/WORLD_SIZE/LOCAL_RANK are set; start nothing.
* **SLURM** (``srun python train.py`` inside an allocation): SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID/
  SLURM_NODEID give the ranks; start nothing.

Failure handling is the launcher's main job after starting processes: a rank that dies must not leave
the others waiting in a collective until the process-group timeout (30 minutes by default). Rank 0
watches its children; when one exits with an error it terminates the rest and exits with an error
itself within seconds. Children watch rank 0 the same way (if their parent disappears, they exit).
Each child runs in its own session (process group), as under torchrun, and is ended with its whole
group: its DataLoader workers go with it, and none is left holding the job's stdout and stderr.

The local ranks share the machine's cores (:mod:`surge.cores`): each one gets ``cores // local ranks`` torch
threads unless the user chose a number, and on a CPU run its own physical cores.
"""
from __future__ import annotations

import atexit
import dataclasses
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types
from datetime import timedelta
from typing import Callable, Optional

from .cores import bind_to_cpus, share_machine
from .preemption import end_worker_processes
from .utils import MisconfigurationError

# Seconds between two looks at the children, and the grace period between asking a process to stop
# (SIGTERM / KeyboardInterrupt) and forcing it (SIGKILL / os._exit).
_POLL_S = 0.2
_GRACE_S = 5.0


@dataclasses.dataclass
class ClusterEnvironment:
    """Where this process sits in the run. ``kind``: "local" (surge starts the other processes),
    "torchrun" (or any launcher that sets RANK/WORLD_SIZE/LOCAL_RANK, surge's own children included)
    or "slurm"."""

    kind: str
    world_size: int
    global_rank: int
    local_rank: int
    node_rank: int
    main_address: str = "127.0.0.1"
    main_port: Optional[int] = None

    @property
    def creates_processes_externally(self) -> bool:
        return self.kind != "local"


def attempt_store(cluster: ClusterEnvironment, timeout: timedelta):
    """Under torchrun with restarts: the rendezvous store, its keys prefixed by the restart count.

    torchrun keeps one store for every attempt, and the process group's keys (where each rank listens)
    are the same in each: a restarted rank could read the address of a rank of the attempt before,
    long gone ("Connection refused"), and an attempt could fail or hang. ``None`` elsewhere (env://).
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        return None
    import torch.distributed as dist

    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), cluster.world_size,
                          is_master=not agent_hosts and cluster.global_rank == 0, timeout=timeout,
                          multi_tenant=not agent_hosts)
    return dist.PrefixStore(f"surge/attempt-{attempt}", store)


def _slurm_launched() -> bool:
    # An interactive `salloc` shell also has SLURM_* variables; only srun with several tasks launches ranks.
    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return False
    return os.environ.get("SLURM_JOB_NAME", "") not in ("bash", "interactive")


def _torchrun_launched() -> bool:
    env = os.environ
    return "TORCHELASTIC_RUN_ID" in env or all(k in env for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def first_slurm_host(nodelist: str) -> str:
    """The first host name of a SLURM node list: "node[03-05,9],gpu1" -> "node03"."""
    nodelist = nodelist.strip()
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist)
    if m is None:
        return "127.0.0.1"
    prefix, ranges = m.group(1), m.group(3)
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def detect_environment(devices: int, num_nodes: int) -> ClusterEnvironment:
    """The :class:`ClusterEnvironment` of this process for a run of ``devices`` processes per node on
    ``num_nodes`` machines. Raises :class:`MisconfigurationError` when an external launcher started a
    different number of processes than the Trainer was asked for."""
    env = os.environ
    expected = devices * num_nodes
    if _torchrun_launched():
        world = int(env["WORLD_SIZE"])
        rank = int(env["RANK"])
        local = int(env.get("LOCAL_RANK", rank % devices))
        node = int(env.get("GROUP_RANK", env.get("NODE_RANK", rank // max(devices, 1))))
        found = ClusterEnvironment("torchrun", world, rank, local, node, env.get("MASTER_ADDR", "127.0.0.1"),
                                   int(env["MASTER_PORT"]) if "MASTER_PORT" in env else None)
    elif _slurm_launched():
        world = int(env["SLURM_NTASKS"])
        port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else \
            10000 + int(env.get("SLURM_JOB_ID", "0")) % 20000  # the same on every node of the job
        addr = env.get("MASTER_ADDR") or first_slurm_host(env.get("SLURM_NODELIST", env.get("SLURM_JOB_NODELIST", "")))
        found = ClusterEnvironment("slurm", world, int(env["SLURM_PROCID"]), int(env["SLURM_LOCALID"]),
                                   int(env.get("SLURM_NODEID", 0)), addr, port)
    else:
        # Plain `python train.py`: this process is local rank 0 of its node. Several nodes without a
        # launcher need NODE_RANK, MASTER_ADDR and MASTER_PORT set by hand on every node.
        node = int(env.get("NODE_RANK", 0))
        if num_nodes > 1 and "MASTER_ADDR" not in env:
            raise MisconfigurationError(
                f"num_nodes={num_nodes} without torchrun or SLURM: set NODE_RANK, MASTER_ADDR and MASTER_PORT on "
                f"every node, or launch with torchrun --nnodes {num_nodes} / srun"
            )
        port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else None
        return ClusterEnvironment("local", expected, node * devices, 0, node, env.get("MASTER_ADDR", "127.0.0.1"), port)
    if found.world_size != expected:
        raise MisconfigurationError(
            f"the launcher ({found.kind}) started {found.world_size} processes, but the Trainer was given "
            f"devices={devices} and num_nodes={num_nodes} ({expected} processes); make them agree"
        )
    if found.kind == "torchrun" and found.world_size > 1:
        # torchrun always sets both; a hand-made launcher that forgets them would otherwise meet on
        # localhost (a hang on several machines) or fail much later.
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing:
            raise MisconfigurationError(
                f"RANK={env['RANK']} and WORLD_SIZE={env['WORLD_SIZE']} are set (a launcher started this process) but "
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: set MASTER_ADDR to the address of "
                f"the rank 0 machine and MASTER_PORT to a free port there, the same on every process"
            )
    return found


def find_free_port() -> int:
    """A TCP port on this machine that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _this_command() -> list[str]:
    """The command line that started this process, to start it again for the other ranks."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":  # python -m package.module ...
        name = spec.name[: -len(".__main__")] if spec.name.endswith(".__main__") else spec.name
        return [sys.executable, "-m", name, *sys.argv[1:]]
    script = sys.argv[0] if sys.argv else ""
    if not script or script == "-c" or not os.path.isfile(script):
        raise MisconfigurationError(
            "strategy='ddp' starts the other ranks by running this script again, but this process was not "
            "started from a script (an interactive session, a notebook or python -c); run a script, or use torchrun"
        )
    return [sys.executable, os.path.abspath(script), *sys.argv[1:]]


class LocalLauncher:
    """Starts local ranks 1..N-1 as copies of this command and watches them (this process is rank 0).

    Started once per process: the children run the whole script, so a later ``trainer.test()`` after
    ``fit()`` finds them already there.
    """

    def __init__(self, cluster: ClusterEnvironment, devices: int, cpu: bool = False) -> None:
        self.cluster, self.devices = cluster, devices
        self.cpu = cpu  # the ranks run on the CPU: each gets its own cores
        self.children: dict[int, subprocess.Popen] = {}
        self._stopping = False
        # The requeue exit code while this rank is leaving after a preemption save, else None (set by the
        # strategy): children exiting with that code then leave with it, they have not failed.
        self.leaving_code: Callable[[], Optional[int]] = lambda: None

    def start(self) -> None:
        command = _this_command()
        port = self.cluster.main_port or find_free_port()
        self.cluster.main_port = port
        base = {"MASTER_ADDR": self.cluster.main_address, "MASTER_PORT": str(port),
                "WORLD_SIZE": str(self.cluster.world_size), "NODE_RANK": str(self.cluster.node_rank),
                "SURGE_LAUNCHER_PID": str(os.getpid())}
        blocks = share_machine(self.devices, base, here=True, cpu=self.cpu)
        # Rank 0 also carries the variables: code that reads RANK/WORLD_SIZE (ours and the user's) sees one truth.
        os.environ.update(base, RANK=str(self.cluster.global_rank), LOCAL_RANK="0")
        for local in range(1, self.devices):
            env = dict(os.environ, **base, RANK=str(self.cluster.global_rank + local), LOCAL_RANK=str(local))
            # Its own session: a terminal's Ctrl-C or `timeout`'s signal reaches rank 0 only (which passes
            # it on, see stop), and the rank can be ended with everything it started (see terminate).
            self.children[local] = subprocess.Popen(command, env=env, cwd=os.getcwd(), start_new_session=_POSIX)
            if blocks:  # right after exec: the threads it starts later (torch's, gloo's) inherit its cores
                bind_to_cpus(blocks[local], pid=self.children[local].pid)
        if blocks:  # after the children, which would otherwise inherit rank 0's cores
            bind_to_cpus(blocks[0])
        threading.Thread(target=self._watch, name="surge-launcher-watch", daemon=True).start()
        atexit.register(self._wait_at_exit)

    def _watch(self) -> None:
        """Poll the children; the first one that fails takes the whole run down."""
        while not self._stopping:
            for local, proc in self.children.items():
                code = proc.poll()
                if code not in (None, 0, self.leaving_code()) and not self._stopping:
                    self._fail(local, code)
                    return
            time.sleep(_POLL_S)

    def _fail(self, local: int, code: int) -> None:
        self._stopping = True
        rank = self.cluster.global_rank + local
        print(f"surge: rank {rank} (local rank {local}) exited with code {code}; stopping the other ranks",
              file=sys.stderr, flush=True)
        self.terminate()
        # Rank 0 may be blocked in a collective that waits for the dead rank; interrupt it, and if it
        # does not get out within the grace period, leave without cleaning up.
        import _thread

        _thread.interrupt_main()
        time.sleep(_GRACE_S)
        end_worker_processes()
        os._exit(code if 0 < code < 256 else 1)

    def stop(self, err: BaseException) -> None:
        """Rank 0 leaves with ``err``: end the other local ranks, which would wait for it in a collective.

        After a preemption save they leave at the same step on their own, and get the grace period to do so:
        a SIGTERM now would be a second signal to a rank the scheduler signalled too, which ends it on its way
        out. After Ctrl-C they get SIGINT, as the terminal would have sent them in rank 0's session."""
        if isinstance(err, SystemExit) and self.leaving_code() is not None:
            self.wait(_GRACE_S)
        self.terminate(signal.SIGINT if isinstance(err, KeyboardInterrupt) else signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for every child to exit."""
        deadline = time.monotonic() + timeout
        for p in self.children.values():
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return

    def terminate(self, sig: int = signal.SIGTERM) -> None:
        """Stop every child and what it started: ``sig`` to each one's process group, then SIGKILL to what
        is left of the groups after the grace period (also of children already gone: a rank killed without
        cleanup leaves its DataLoader workers in its group)."""
        self._stopping = True
        for p in self.children.values():
            _signal_group(p, sig)
        self.wait(_GRACE_S)
        for p in self.children.values():
            _signal_group(p, signal.SIGKILL)
        for p in self.children.values():
            p.wait()

    def _wait_at_exit(self) -> None:
        """At the end of rank 0's script: wait for the children, and fail if one of them failed."""
        if self._stopping:
            return
        for local, proc in self.children.items():
            code = proc.wait()
            if code != 0:
                self._stopping = True
                print(f"surge: rank {self.cluster.global_rank + local} exited with code {code}",
                      file=sys.stderr, flush=True)
                self.terminate()
                end_worker_processes()
                os._exit(code if 0 < code < 256 else 1)
        self._stopping = True


_POSIX = hasattr(os, "killpg")


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """``sig`` to the process group that ``proc`` leads (its own session), or to ``proc`` alone off POSIX."""
    try:
        if _POSIX:
            os.killpg(proc.pid, sig)
        elif proc.poll() is None:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty: everything in it has exited


_watching_parent: Optional[int] = None  # the pid the watch thread of this process looks after, once started


def watch_parent() -> None:
    """In a child started by :class:`LocalLauncher`: exit when rank 0 goes away (killed, crashed), so
    that no orphan waits in a collective for the process-group timeout. One thread per process, however
    many stages (fit, validate, test...) call this."""
    global _watching_parent
    parent = int(os.environ.get("SURGE_LAUNCHER_PID", "0"))
    if not parent or os.getpid() == parent or _watching_parent == parent:
        return
    _watching_parent = parent

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                end_worker_processes()
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="surge-parent-watch", daemon=True).start()


# ---------------------------------------------------------------------- ddp_spawn: workers from this process
class _MainRefs(pickle.Pickler):
    """A pickler that notes every class and function it meets from ``__main__``."""

    def __init__(self, file) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.main_names: set[str] = set()

    def persistent_id(self, obj):
        if isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == "__main__":
            self.main_names.add(obj.__qualname__)
        return None  # pickle it the normal way


def pickle_for_spawn(parts: dict) -> bytes:
    """``parts`` (a name for each piece: "the module", "the datamodule", ...) pickled into bytes for
    :func:`spawn`, or a :class:`MisconfigurationError` naming the piece that cannot travel.

    Plain ``pickle``, not torch's ``ForkingPickler``: that one would put every tensor in shared memory,
    and then the workers' CPU parameters would be one copy updated by every rank at once.
    """
    import io

    for name, obj in parts.items():
        probe, failure = _MainRefs(io.BytesIO()), None
        try:
            probe.dump(obj)
        except Exception as err:  # pickling raises TypeError, AttributeError, PicklingError, ...
            failure = err
        if probe.main_names and not getattr(sys.modules.get("__main__"), "__file__", None):
            raise MisconfigurationError(
                f"strategy='ddp_spawn' starts fresh Python processes, and they cannot see what is defined in this "
                f"notebook or interactive session: {', '.join(sorted(probe.main_names))} (used by {name}). "
                f"Move those definitions into a .py file and import them from there"
            ) from failure
        if failure is not None:
            raise MisconfigurationError(
                f"strategy='ddp_spawn' sends {name} to new processes by pickling it, and that failed: "
                f"{type(failure).__name__}: {failure}. Keep lambdas, open files, locks and generators out of its "
                f"attributes (create them in setup()), or use strategy='ddp' from a script"
            ) from failure
    return pickle.dumps(parts, protocol=pickle.HIGHEST_PROTOCOL)


def spawn(worker, payload: bytes, cluster: ClusterEnvironment, devices: int, cpu: bool = False) -> None:
    """Run ``worker(payload)`` in ``devices`` new processes as the local ranks of this node, and wait.

    Started with ``torch.multiprocessing`` in the "spawn" context (fresh interpreters: safe with CUDA
    and threads, and the same on every OS). Each worker finds its rank in its environment, as under
    torchrun. If one raises, torch stops the others and raises here with that worker's traceback.
    """
    import torch.multiprocessing as mp

    port = cluster.main_port
    if port is None:
        if cluster.world_size > devices:
            raise MisconfigurationError("strategy='ddp_spawn' on several nodes needs MASTER_PORT (and MASTER_ADDR, "
                                        "NODE_RANK) set the same way on every node")
        port = find_free_port()
    env = {"MASTER_ADDR": cluster.main_address, "MASTER_PORT": str(port), "WORLD_SIZE": str(cluster.world_size),
           "NODE_RANK": str(cluster.node_rank), "SURGE_LAUNCHER_PID": str(os.getpid())}
    blocks = share_machine(devices, env, here=False, cpu=cpu)
    mp.start_processes(_spawned, args=(worker, payload, env, cluster.node_rank * devices, blocks), nprocs=devices,
                       start_method="spawn", join=True)


def _spawned(local_rank: int, worker, payload: bytes, env: dict, first_rank: int,
             blocks: Optional[list[list[int]]] = None) -> None:
    """The entry point of a spawned worker: its rank into the environment, its cores, then the worker."""
    os.environ.update(env, RANK=str(first_rank + local_rank), LOCAL_RANK=str(local_rank))
    if blocks:
        bind_to_cpus(blocks[local_rank])
    if "OMP_NUM_THREADS" in env:  # torch was imported before the variable was set: it reads it only then
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    worker(payload)
