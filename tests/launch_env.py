"""The environment of a run a test starts itself: without the launch variables of whatever started pytest
(torchrun, SLURM, surge's launcher, an earlier test's ranks), so the run decides its own ranks."""
import os

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
               "TORCHELASTIC_RUN_ID", "SURGE_LAUNCHER_PID", "SLURM_NTASKS")


def child_env(drop: tuple = (), **extra: str) -> dict:
    """``os.environ`` without the launch variables (and ``drop``), with ``extra`` set: for a subprocess."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and k not in drop}
    env.update(extra)
    return env


def clear_launch_vars(monkeypatch) -> None:
    """Remove the launch variables from this process's environment for one test (monkeypatch puts them back)."""
    for key in LAUNCH_VARS:
        monkeypatch.delenv(key, raising=False)
