"""Checkpoint writes against kills, full disks and a second writer (docs/reliability.md, "Checkpoint writes").

The runs that are killed, or fill a disk, or run as 2 ranks are real processes, all forked by one
driver (``python driver.py ROOT``): it imports torch, surge and torch's lazily imported distributed
modules once, so that a forked run starts in a fraction of a second where a new interpreter takes
seconds. The driver writes what each run saw as JSON; the tests read it, and load the checkpoints the
runs left in this (pytest's) process. The rest are in-process tests of the on-disk rules.
"""
import errno
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest
import torch

from surge.checkpoint import CheckpointWriteError, load_checkpoint
from surge.strategies.fsdp_checkpoint import PendingSave, commit_folder, read_sharded_checkpoint

from launch_env import child_env

DRIVER = r'''
import errno, json, os, pathlib, random, shutil, signal, sys, time, traceback
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import surge
from surge.checkpoint import load_checkpoint, save_checkpoint
from surge.launch import find_free_port
from surge.strategies.fsdp import FSDP
from surge.strategies.fsdp_checkpoint import read_sharded_checkpoint
# What a run imports on first use, imported once here: a forked run then starts in a fraction of a second.
import torch._dynamo, torch.distributed.checkpoint, torch.distributed.checkpoint.state_dict  # noqa: E401,F401
import torch.distributed.fsdp, torch.distributed.tensor  # noqa: E401,F401

ROOT = sys.argv[1]
CONFIG = json.load(open(os.path.join(ROOT, "config.json")))
RESULTS = {}


class Net(surge.Module):
    def __init__(self, width):
        super().__init__()
        self.a = nn.Linear(width, width)
        self.b = nn.Linear(width, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.b(torch.tanh(self.a(x))), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def loader(width):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, width, generator=g)
    return DataLoader(TensorDataset(x, x[:, :1]), batch_size=4)


class Starts(surge.callbacks.Callback):
    """Appends where each run started to ``log`` (with ``folder``: what the folder held then, and whether
    each checkpoint in it loads), and the step it is at to ``log + ".step"``; stops ``stop_after`` steps
    after the start."""

    def __init__(self, log, folder=None, stop_after=None):
        self.log, self.folder, self.stop_after = log, folder, stop_after

    def on_train_start(self, trainer, module):
        record = {"start": trainer.global_step, "ckpt": trainer.ckpt_path}
        if self.folder is not None and trainer.is_global_zero:
            record["names"] = sorted(os.listdir(self.folder))
            try:
                for name in record["names"]:
                    if name.endswith(".ckpt") and not name.startswith("."):
                        read_sharded_checkpoint(os.path.join(self.folder, name))
            except Exception as err:
                record["unloadable"] = f"{name}: {err}"
        self.start = trainer.global_step
        if trainer.is_global_zero:
            with open(self.log, "a") as f:
                f.write(json.dumps(record) + "\n")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        # (before ModelCheckpoint saves this step: a kill that waits for this line lands in or after that save)
        if trainer.is_global_zero:
            with open(self.log + ".step", "w") as f:
                f.write(str(trainer.global_step))
        if self.stop_after is not None and trainer.global_step >= self.start + self.stop_after:
            trainer.should_stop = True


def fit(folder, width, steps, async_save=False, resume=None, every=2, top_k=0, callbacks=(), devices=1):
    # k > 1 files need a monitor to rank them by (Lightning's rule): the step keeps the newest k
    ranked = dict(monitor="step", mode="max") if top_k > 1 else {}
    ckpt = surge.callbacks.ModelCheckpoint(dirpath=folder, every_n_train_steps=every, save_top_k=top_k,
                                           save_last=True, **ranked)
    trainer = surge.Trainer(accelerator="cpu", devices=devices, strategy=FSDP(async_save=async_save),
                            max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[*callbacks, ckpt], default_root_dir=folder + "-root")
    torch.manual_seed(0)
    trainer.fit(Net(width), loader(width), ckpt_path=resume)
    return trainer


def fork(fn, *args, ranks=1):
    """Run ``fn(*args)`` in ``ranks`` forked processes (as ranks of one job when more than one)."""
    port, pids = find_free_port(), []
    for rank in range(ranks):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                if ranks > 1:
                    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(ranks),
                                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
                fn(*args)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)  # a forked copy of the driver: not its atexit handlers or its jobs
        pids.append(pid)
    return pids


def wait(pids):
    return [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]


def lines(path):
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def kill_after_start(pid, log, delay, steps=0):
    """SIGKILL ``pid`` ``delay`` seconds after it appended its start to ``log`` and (``steps``) reached that
    many steps beyond its start: progress, not time, so that a loaded machine moves the kills too."""
    before, deadline = len(lines(log)), time.time() + 60
    reaped = []  # the exit status, when the process ended by itself while we polled (waitpid reaps it)

    def waiting(done):
        while not reaped and not done() and time.time() < deadline:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                reaped.append(os.waitstatus_to_exitcode(status))
                return
            time.sleep(0.005)

    waiting(lambda: len(lines(log)) > before)
    if steps and not reaped and len(lines(log)) > before:
        target = lines(log)[-1]["start"] + steps
        waiting(lambda: os.path.exists(log + ".step") and int(open(log + ".step").read() or 0) >= target)
    if reaped:
        return reaped[0]
    time.sleep(delay)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return wait([pid])[0]


def leftovers(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


# ---------------------------------------------------------------------- a commit killed at each step
def die_at(folder, point):
    """Make the second save of last.ckpt in ``folder`` end the process (SIGKILL-like) at ``point``."""
    real = os.rename
    last, tmp, old = (os.path.join(folder, n) for n in ("last.ckpt", ".last.ckpt.tmp", ".last.ckpt.old"))

    def rename(src, dst, *args, **kwargs):
        src, dst = os.fspath(src), os.fspath(dst)
        second = os.path.isdir(last) or os.path.isdir(old)  # the first commit has neither
        if second and point == "writing" and src == os.path.join(tmp, ".metadata.tmp"):
            os._exit(9)  # every shard written, DCP's .metadata not yet
        if second and point == "before_first_rename" and (src, dst) == (last, old):
            os._exit(9)
        if os.path.isdir(old) and point == "between_renames" and (src, dst) == (tmp, last):
            os._exit(9)
        real(src, dst, *args, **kwargs)
        if os.path.isdir(old) and point == "after_second_rename" and (src, dst) == (tmp, last):
            os._exit(9)

    os.rename = rename


def killed_commit(folder, mode, point):
    die_at(folder, point)
    fit(folder, 8, 4, async_save=mode == "async")


def resumed(folder, mode, log):
    fit(folder, 8, 6, async_save=mode == "async", resume="last", callbacks=[Starts(log)])


def commit_kills():
    for mode in ("sync", "async"):
        for point in ("writing", "before_first_rename", "between_renames", "after_second_rename"):
            folder = os.path.join(ROOT, "commit", mode, point)
            status = wait(fork(killed_commit, folder, mode, point))
            killed = leftovers(folder), sorted(n for n in os.listdir(folder) if not n.startswith("."))
            log = folder + ".starts"
            wait(fork(resumed, folder, mode, log))
            RESULTS[f"{mode}/{point}"] = {"status": status, "killed": killed, "after": leftovers(folder),
                                          "starts": lines(log)}


# ---------------------------------------------------------------------- random kills of a sharded run
def kept_training(folder, async_save, log, stop_after):
    fit(folder, 512, 10_000, async_save=async_save, resume="last", every=1, top_k=2,
        callbacks=[Starts(log, folder, stop_after)])


def fsdp_kill_loop(kills):
    folder, log = os.path.join(ROOT, "loop"), os.path.join(ROOT, "loop.starts")
    os.makedirs(folder)
    rng = random.Random(0)
    killed = []
    for i in range(kills):
        pid, = fork(kept_training, folder, i % 2 == 1, log, None)
        # Right after the logged step ModelCheckpoint writes two checkpoints (~0.3 s on an idle machine).
        killed.append(kill_after_start(pid, log, rng.uniform(0.0, 0.3), steps=rng.choice([1, 2])))
    status = wait(fork(kept_training, folder, False, log, 2))
    RESULTS["loop"] = {"status": status, "killed": killed, "starts": lines(log), "after": leftovers(folder)}


# ---------------------------------------------------------------------- killed single-file saves
def single_saver(path, log):
    marker, whole = 0, None
    if os.path.exists(path):
        ckpt = load_checkpoint(path)
        marker = ckpt["marker"]
        whole = bool((ckpt["state_dict"]["w"] == float(marker)).all())
    with open(log, "a") as f:
        f.write(json.dumps({"marker": marker, "whole": whole}) + "\n")
    while True:
        marker += 1
        save_checkpoint({"state_dict": {"w": torch.full((2_000_000,), float(marker))}, "marker": marker}, path)


def first_save(path):
    save_checkpoint({"state_dict": {"w": torch.zeros(2_000_000)}, "marker": 0}, path)


def live_writer(path, ready):
    """A save that stays inside its write until killed: a live writer's temporary."""
    def slow_save(obj, f, *args, **kwargs):
        f.write(b"part of a checkpoint")
        f.flush()
        open(ready, "w").close()
        time.sleep(120)

    torch.save = slow_save
    save_checkpoint({"state_dict": {}}, path)


def started(folder):
    ckpt = surge.callbacks.ModelCheckpoint(dirpath=folder, every_n_epochs=0, save_top_k=0)
    trainer = surge.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[ckpt], default_root_dir=folder + "-root")
    trainer.fit(Net(4), loader(4))


def single_file_kills(kills):
    folder = os.path.join(ROOT, "single")
    os.makedirs(folder)
    path, log = os.path.join(folder, "run.ckpt"), os.path.join(ROOT, "single.loads")
    rng, temporaries = random.Random(0), []
    wait(fork(first_save, path))
    for _ in range(kills):
        pid, = fork(single_saver, path, log)
        kill_after_start(pid, log, rng.uniform(0.0, 0.15))  # a save takes ~0.05 s
        temporaries.append(len([n for n in os.listdir(folder) if n.startswith(".tmp-")]))
    ready = os.path.join(ROOT, "live.ready")
    before = set(os.listdir(folder))
    writer, = fork(live_writer, os.path.join(folder, "live.ckpt"), ready)
    deadline = time.time() + 60
    while not os.path.exists(ready) and time.time() < deadline and os.waitpid(writer, os.WNOHANG) == (0, 0):
        time.sleep(0.01)
    live = sorted(set(os.listdir(folder)) - before)
    status = wait(fork(started, folder))
    RESULTS["single"] = {"temporaries": temporaries, "live": live, "status": status,
                         "after_start": sorted(os.listdir(folder)), "loads": lines(log)}
    os.kill(writer, signal.SIGKILL)  # now its temporary is a dead writer's: the test removes it
    wait([writer])


# ---------------------------------------------------------------------- full disks
def full_disk(folder, mode, out):
    """A real small tmpfs: the third sharded save does not fit."""
    result = {}
    try:
        fit(folder, 512, 8, async_save=mode == "async", top_k=1)
    except BaseException as err:  # (DCP's own CheckpointException is no Exception)
        result["error"] = [type(err).__name__, isinstance(err, OSError), str(err)[-2000:]]
    result["names"] = sorted(os.listdir(folder))
    result["steps"] = {n: read_sharded_checkpoint(os.path.join(folder, n))["global_step"]
                       for n in result["names"] if not n.startswith(".")}
    with open(out, "w") as f:
        json.dump(result, f)


REAL_OPEN = pathlib.Path.open


class FullOnRankOne(surge.callbacks.Callback):
    """From step 3 on, rank 1's writes into the step-4 save's folder fail as on a full disk (after some
    bytes; an asynchronous save of step 2 may still be writing, and must not fail)."""

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step != 3 or trainer.global_rank != 1:
            return
        real_open = pathlib.Path.open

        class Full:
            def __init__(self, f):
                self.f, self.room = f, 1000

            def write(self, data):
                if len(data) > self.room:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                self.room -= len(data)
                return self.f.write(data)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        def open_(path, mode="r", *args, **kwargs):
            f = real_open(path, mode, *args, **kwargs)
            return Full(f) if "w" in mode and path.parent.name == ".epoch=0-step=4.ckpt.tmp" else f

        pathlib.Path.open = open_


def full_on_rank_one(folder, mode):
    result, rank = {}, int(os.environ["RANK"])
    try:
        try:
            fit(folder, 8, 6, async_save=mode == "async", top_k=1, devices=2, callbacks=[FullOnRankOne()])
        except BaseException as err:  # (DCP's own CheckpointException is no Exception)
            result["error"] = [type(err).__name__, isinstance(err, OSError), str(err)[-2000:]]
        pathlib.Path.open = REAL_OPEN
        if rank == 0:
            result["names"] = sorted(os.listdir(folder))
        # The same processes go on: a resume from the checkpoints that the failed save left intact.
        trainer = fit(folder, 8, 6, async_save=mode == "async", top_k=1, devices=2, resume="last",
                      callbacks=[Starts(folder + ".starts")])
        result["resumed_to"] = trainer.global_step
    finally:
        with open(f"{folder}.{rank}.json", "w") as f:
            json.dump(result, f)


def full_disks():
    if CONFIG.get("tmpfs"):
        for mode in ("sync", "async"):
            folder, out = os.path.join(CONFIG["tmpfs"], mode), os.path.join(ROOT, f"tmpfs-{mode}.json")
            status = wait(fork(full_disk, folder, mode, out))
            RESULTS[f"tmpfs/{mode}"] = dict(json.load(open(out)), status=status)
            shutil.rmtree(folder)  # room for the next one
    for mode in ("sync", "async"):
        folder = os.path.join(ROOT, "enospc", mode)
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        status = wait(fork(full_on_rank_one, folder, mode, ranks=2))
        RESULTS[f"enospc/{mode}"] = {"status": status, "starts": lines(folder + ".starts"),
                                     "ranks": [json.load(open(f"{folder}.{r}.json")) for r in (0, 1)]}


for job in CONFIG["jobs"]:
    t0 = time.time()
    try:
        {"commit_kills": commit_kills, "fsdp_kill_loop": lambda: fsdp_kill_loop(CONFIG["fsdp_kills"]),
         "single_file_kills": lambda: single_file_kills(CONFIG["single_kills"]), "full_disks": full_disks}[job]()
    except Exception:
        RESULTS[f"{job}/driver_error"] = traceback.format_exc()
    RESULTS[f"{job}/seconds"] = time.time() - t0
    with open(os.path.join(ROOT, "results.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)
'''


def _mount_tmpfs(folder: Path, size: str) -> bool:
    """A small tmpfs at ``folder``, where this machine lets us mount one (root, not in a locked-down container)."""
    folder.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """One run of the driver: every forked run of this file, and what each saw."""
    root = tmp_path_factory.mktemp("commit")
    mount = root / "tmpfs"
    mounted = os.geteuid() == 0 and _mount_tmpfs(mount, "8m")
    config = {"jobs": ["commit_kills", "single_file_kills", "full_disks", "fsdp_kill_loop"],
              "single_kills": 30, "fsdp_kills": 5, "tmpfs": str(mount) if mounted else None}
    (root / "config.json").write_text(json.dumps(config))
    (root / "driver.py").write_text(DRIVER)
    env = child_env()
    try:
        proc = subprocess.run([sys.executable, str(root / "driver.py"), str(root)], cwd=root, env=env, text=True,
                              capture_output=True, timeout=300)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    results = json.loads((root / "results.json").read_text()) if (root / "results.json").exists() else {}
    results["_stdout"], results["_stderr"], results["_root"] = proc.stdout, proc.stderr, str(root)
    results["_tmpfs"] = mounted
    return results


def _job(results: dict, job: str) -> None:
    error = results.get(f"{job}/driver_error")
    assert error is None, f"{error}\n--- driver stderr:\n{results['_stderr'][-4000:]}"


# ====================================================================== a commit killed at each step
POINTS = ["writing", "before_first_rename", "between_renames", "after_second_rename"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_commit_killed_at_any_step_resumes_from_the_newest_complete_checkpoint(driver, mode):
    """The second save of a sharded last.ckpt (step 4; the first was at step 2) is killed: while DCP writes
    the new folder, before the first rename of the commit, between the two renames (no last.ckpt at all:
    this started from step 0), after the second. A new Trainer with ckpt_path="last" resumes from the
    newest complete checkpoint and leaves nothing beside it. Async: the commit runs in the writer thread."""
    _job(driver, "commit_kills")
    runs = {point: driver[f"{mode}/{point}"] for point in POINTS}
    assert {p: run["status"] for p, run in runs.items()} == {p: [9] for p in POINTS}, "not killed where meant"
    resumed = {p: [start["start"] for start in run["starts"]] for p, run in runs.items()}
    assert resumed == {"writing": [2], "before_first_rename": [4], "between_renames": [4], "after_second_rename": [4]}
    left_by_kill = {"writing": ([".last.ckpt.tmp"], ["last.ckpt"]),
                    "before_first_rename": ([".last.ckpt.tmp"], ["last.ckpt"]),
                    "between_renames": ([".last.ckpt.old", ".last.ckpt.tmp"], []),  # what restarted from step 0
                    "after_second_rename": ([".last.ckpt.old"], ["last.ckpt"])}
    for point, run in runs.items():
        hidden, visible = run["killed"]
        assert ([n for n in hidden if not n.endswith(".lock")], visible) == left_by_kill[point], point
        assert run["starts"][0]["ckpt"].endswith("last.ckpt")
        assert run["after"] == [], f"{point}: leftovers after the restart: {run['after']}"
        folder = Path(driver["_root"]) / "commit" / mode / point
        assert read_sharded_checkpoint(str(folder / "last.ckpt"))["global_step"] == 6
    out = driver["_stdout"]
    assert f"completed the interrupted commit of last.ckpt (the new version was written whole) in " \
           f"{Path(driver['_root']) / 'commit' / mode / 'between_renames'}" in out


# ====================================================================== random kills
def test_random_kills_of_a_sharded_run_never_lose_a_checkpoint(driver):
    """A 1-process FSDP run saving two checkpoints (top-k and last) every step, killed with SIGKILL at
    random moments 5 times (sync and async saves in turn), restarted with ckpt_path="last" each time:
    every restart finds only complete, loadable checkpoints and continues from at least the step the
    previous restart reached; nothing is left beside them at the end."""
    _job(driver, "fsdp_kill_loop")
    loop = driver["loop"]
    assert loop["status"] == [0], f"the last restart failed: {loop}\n--- driver stderr:\n{driver['_stderr'][-6000:]}"
    starts = loop["starts"]
    assert len(starts) == 6 and loop["killed"] == [-9] * 5, f"not every restart reached training: {loop}"
    assert not [s for s in starts if "unloadable" in s], starts
    steps = [s["start"] for s in starts]
    assert steps == sorted(steps) and steps[-1] >= 1, f"a restart went back, or none resumed: {steps}"
    assert not [n for s in starts for n in s["names"] if n.startswith(".")], \
        f"a restart saw a leftover its start should have cleared: {starts}"
    assert loop["after"] == []


def test_killed_single_file_saves_leave_no_temporaries_after_the_next_start(driver):
    """30 SIGKILLs of a process that saves an 8 MB checkpoint in a loop, each restarted process checking
    the checkpoint first: it is whole after every kill, but a killed save leaves its temporary. The next
    start (a Trainer whose ModelCheckpoint uses the folder) removes every temporary of a dead writer, but
    not the one a live process is writing; once that process dies, it goes too."""
    _job(driver, "single_file_kills")
    single = driver["single"]
    live, = single["live"]
    assert single["status"] == [0]
    assert single["after_start"] == [live, "run.ckpt"]
    assert single["temporaries"][-1] >= 5, f"the kills hardly ever hit a save: {single['temporaries']}"
    assert [load["whole"] for load in single["loads"]] == [True] * 30
    folder = Path(driver["_root"]) / "single"
    assert load_checkpoint(folder / "run.ckpt")["marker"] >= single["loads"][-1]["marker"]
    # The live writer was killed after that start: its temporary is a dead writer's now.
    from surge.checkpoint_locks import remove_stale_temporaries

    assert [Path(p).name for p, _ in remove_stale_temporaries(str(folder))] == [live]
    assert sorted(os.listdir(folder)) == ["run.ckpt"]
    assert f"ModelCheckpoint: removed {single['temporaries'][-1]} temporary file(s) of interrupted saves" \
        in driver["_stdout"]


# ====================================================================== full disks
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_full_disk_under_two_ranks_is_a_clear_error_on_both_and_keeps_the_checkpoints(driver, mode):
    """Rank 1's shard write fails with ENOSPC (injected below DCP: torch.save into the stream turns it
    into "RuntimeError: unexpected pos"): both ranks raise CheckpointWriteError naming rank 1's shard
    file and the OS error, the partial folder is gone, the step-2 checkpoints are intact, and the same
    processes resume from them to the end."""
    _job(driver, "full_disks")
    run = driver[f"enospc/{mode}"]
    assert run["status"] == [0, 0]
    for rank in run["ranks"]:
        kind, is_os_error, message = rank["error"]
        assert kind == "CheckpointWriteError" and is_os_error
        assert "epoch=0-step=4.ckpt" in message and ".epoch=0-step=4.ckpt.tmp/__1_0.distcp" in message
        assert "No space left on device" in message and "previous checkpoints are intact" in message
        assert rank["resumed_to"] == 6
    assert run["ranks"][0]["names"] == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert [s["start"] for s in run["starts"]] == [2]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_full_tmpfs_is_a_clear_error_and_keeps_the_checkpoints(driver, mode):
    """A real 8 MiB tmpfs: the third sharded save (3 MiB) does not fit. CheckpointWriteError names the
    shard file and ENOSPC; no partial folder or lock is left; the two earlier checkpoints load."""
    if not driver["_tmpfs"]:
        pytest.skip("mounting a tmpfs is not permitted here")
    _job(driver, "full_disks")
    run = driver[f"tmpfs/{mode}"]
    assert run["status"] == [0]
    kind, is_os_error, message = run["error"]
    assert kind == "CheckpointWriteError" and is_os_error
    assert ".epoch=0-step=4.ckpt.tmp/__0_0.distcp" in message and "No space left on device" in message
    assert run["names"] == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert run["steps"] == {"epoch=0-step=2.ckpt": 2, "last.ckpt": 2}


# ====================================================================== the on-disk rules, in-process
NO_SUCH_PID = 2**22 + 1  # above the largest pid_max Linux allows


def _sharded(folder: Path, tag: str, complete: bool = True) -> None:
    """A stand-in for a sharded checkpoint folder: what recovery looks at is which files are there."""
    folder.mkdir()
    (folder / "__0_0.distcp").write_text(tag)
    (folder / "surge_meta.pt").write_text(tag)
    if complete:
        (folder / ".metadata").write_text(tag)


def _tag(folder: Path) -> str:
    return (folder / "__0_0.distcp").read_text()


@pytest.mark.parametrize("state, survivor", [
    # (what a crash left beside last.ckpt, which version ends up as last.ckpt)
    ({"tmp": True, "last": True}, "tmp"),  # killed before the first rename: the new one is complete
    ({"tmp": True, "old": True}, "tmp"),  # between the renames: no last.ckpt at all
    ({"last": True, "old": True}, "last"),  # after the second rename
    ({"tmp": False, "last": True}, "last"),  # while writing
    ({"tmp": False, "old": True}, "old"),  # a newer write killed after an interrupted commit
    ({"old": True}, "old"),
    ({"tmp": True}, "tmp"),  # the first save of the name, killed mid-commit
    ({"tmp": False, "old": False}, None),  # nothing whole: all of it goes
])
def test_recovery_puts_the_newest_complete_version_under_the_name(tmp_path, state, survivor):
    from surge.strategies.fsdp_commit import recover_interrupted_commits

    names = {"tmp": ".last.ckpt.tmp", "last": "last.ckpt", "old": ".last.ckpt.old"}
    for kind, complete in state.items():
        _sharded(tmp_path / names[kind], kind, complete)
    (tmp_path / ".last.ckpt.lock").touch()  # the dead writer's lock file
    notes = recover_interrupted_commits(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ([] if survivor is None else ["last.ckpt"])
    if survivor is not None:
        assert _tag(tmp_path / "last.ckpt") == survivor
    assert len(notes) == 1 and "last.ckpt" in notes[0]


def test_recovery_leaves_a_live_save_and_other_files_alone(tmp_path):
    from surge.checkpoint_locks import hold_lock, release_lock
    from surge.strategies.fsdp_commit import recover_interrupted_commits

    _sharded(tmp_path / ".last.ckpt.tmp", "tmp", complete=False)
    _sharded(tmp_path / ".last.ckpt.old", "old")
    (tmp_path / ".hydra.lock").touch()  # not a checkpoint's
    (tmp_path / ".model.pt.tmp").mkdir()  # a name without ModelCheckpoint's extension
    lock = hold_lock(str(tmp_path / ".last.ckpt.lock"))  # a live writer (another open file: flock tells)
    try:
        assert recover_interrupted_commits(str(tmp_path)) == []
        assert sorted(os.listdir(tmp_path)) == [".hydra.lock", ".last.ckpt.lock", ".last.ckpt.old",
                                                ".last.ckpt.tmp", ".model.pt.tmp"]
    finally:
        release_lock(lock, str(tmp_path / ".last.ckpt.lock"))
    recover_interrupted_commits(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".hydra.lock", ".model.pt.tmp", "last.ckpt"]


def test_a_temporary_is_removed_only_when_no_one_holds_its_lock(tmp_path):
    import fcntl
    import socket

    from surge.checkpoint_locks import remove_stale_temporaries

    host = socket.gethostname()
    dead = tmp_path / f".tmp-{host}-{NO_SUCH_PID}-abc_123.ckpt"
    foreign = tmp_path / f".tmp-other-host-{os.getpid()}-x1.ckpt"  # no pid check can tell: the lock does
    older = tmp_path / ".tmp-k3j2h1.ckpt"  # written by an older surge: no owner in the name, nothing proves it dead
    for path in (dead, foreign, older):
        path.write_bytes(b"x" * 100)
    (tmp_path / f".tmp-{host}-1-dir.ckpt").mkdir()
    held = os.open(dead, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # a live writer whose pid says nothing (another pid namespace)
    try:
        assert [Path(p).name for p, _ in remove_stale_temporaries(str(tmp_path))] == [foreign.name]
    finally:
        os.close(held)
    assert remove_stale_temporaries(str(tmp_path)) == [(str(dead), 100)]
    assert sorted(os.listdir(tmp_path)) == [older.name, f".tmp-{host}-1-dir.ckpt"]


def test_a_save_holds_the_lock_of_its_temporary_until_it_is_renamed(tmp_path, monkeypatch):
    """While torch.save writes, a cleaner cannot take the temporary; the finished file has its name."""
    import surge.checkpoint as checkpoint_mod
    from surge.checkpoint_locks import remove_stale_temporaries

    seen = []
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        seen.append(remove_stale_temporaries(str(tmp_path)))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_mod.torch, "save", save)
    checkpoint_mod.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, str(tmp_path / "a.ckpt"))
    assert seen == [[]] and sorted(os.listdir(tmp_path)) == ["a.ckpt"]


def test_commit_folder_keeps_the_old_version_when_the_new_cannot_go_in(tmp_path, monkeypatch):
    _sharded(tmp_path / "last.ckpt", "last")
    _sharded(tmp_path / ".last.ckpt.tmp", "tmp")
    real = os.rename

    def rename(src, dst):
        if os.fspath(src).endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # (a directory that must grow, on ext4)
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        commit_folder(str(tmp_path / ".last.ckpt.tmp"), str(tmp_path / "last.ckpt"))
    assert _tag(tmp_path / "last.ckpt") == "last" and not (tmp_path / ".last.ckpt.old").exists()


def test_a_failed_asynchronous_write_removes_its_folder_and_lock(tmp_path):
    """PendingSave with FolderWrite, without processes: a failed write leaves the previous checkpoint
    and nothing else; the error names the OS error."""
    from surge.strategies.fsdp_commit import FolderWrite

    _sharded(tmp_path / "last.ckpt", "last")
    write = FolderWrite(str(tmp_path / "last.ckpt"), {"global_step": 4})
    assert sorted(os.listdir(tmp_path)) == [".last.ckpt.lock", ".last.ckpt.tmp", "last.ckpt"]
    assert os.listdir(tmp_path / ".last.ckpt.tmp") == ["surge_meta.pt"]
    future = Future()
    pending = PendingSave(future, write.path, write.commit, write.abandon)
    future.set_exception(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x.distcp")))
    with pytest.raises(CheckpointWriteError, match=r"last\.ckpt.*No space left on device: .*x\.distcp"):
        pending.wait()
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt"] and _tag(tmp_path / "last.ckpt") == "last"


def test_a_folder_half_removed_is_never_taken_for_a_checkpoint(tmp_path, monkeypatch):
    """Deleting a sharded checkpoint (a stale top-k) first renames it to the hidden .NAME.removing: a kill
    during the rest of the deletion leaves nothing under a checkpoint's name (the half-deleted folder would
    be the newest, and ckpt_path="last" would take it), and the next start finishes the deletion."""
    from surge.checkpoint import remove_checkpoint_files
    from surge.checkpoint_search import checkpoints_in, tidy

    _sharded(tmp_path / "epoch=0-step=2.ckpt", "old")
    _sharded(tmp_path / "epoch=0-step=4.ckpt", "new")
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", lambda *args, **kwargs: None)  # "killed" before rmtree did anything
    remove_checkpoint_files(str(tmp_path / "epoch=0-step=2.ckpt"))
    assert sorted(os.listdir(tmp_path)) == [".epoch=0-step=2.ckpt.removing", "epoch=0-step=4.ckpt"]
    assert checkpoints_in(str(tmp_path)) == [str(tmp_path / "epoch=0-step=4.ckpt")]
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    notes = tidy(str(tmp_path))
    assert any("finished deleting .epoch=0-step=2.ckpt.removing" in n for n in notes), notes
    assert sorted(os.listdir(tmp_path)) == ["epoch=0-step=4.ckpt"] and _tag(tmp_path / "epoch=0-step=4.ckpt") == "new"