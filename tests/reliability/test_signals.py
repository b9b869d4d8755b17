"""Signals and preemption, and rank faults that must leave no process behind (docs/reliability.md,
"Signals and preemption"). Real processes, gloo on CPU, under surge's launcher and under torchrun. Every
subprocess runs under a timeout and the pids it started are killed afterwards: a regression fails, never hangs CI."""
import os
import signal
import subprocess
import sys
import time

import pytest

import surge
from surge.utils import MisconfigurationError

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR", "TORCHELASTIC_RUN_ID",
               "SURGE_LAUNCHER_PID", "NODE_RANK", "GROUP_RANK", "SLURM_NTASKS")
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "--monitor-interval", "0.5")


def _start(cmd, cwd):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def _pids(out) -> list[int]:
    """The pids the run's processes wrote into ``out`` (ranks and DataLoader workers)."""
    return [int(p.name.split("-")[-1]) for p in out.glob("pid-*")]


def _finish(proc, out, timeout):
    """Wait for the job to end and its stdout/stderr to reach EOF (every process holding them gone).
    Returns stdout, stderr and the pids of the job's processes still alive then, after killing those
    (and the job, if it outlived ``timeout``): no test leaves a process behind."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout = None
    survivors = [pid for pid in _pids(out) if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    if stdout is None:
        proc.kill()
        stdout, stderr = proc.communicate(timeout=30)
        raise AssertionError(f"the job, or a process holding its output, outlived {timeout} s; left: {survivors}; "
                             f"stderr: {stderr[-3000:]}")
    return stdout, stderr, survivors


# ---------------------------------------------------------------------- preemption_signals / preemption_grace
def test_the_trainer_asks_for_a_decision_only_from_the_step_the_handler_names():
    """The training loop calls ``due`` only once ``global_step >= next_check``. One process: never before a
    signal, at once after one. Several: from the first step, and the handler's own agreed checks move it on;
    a signal there must not move it (the ranks run their all-reduce at the same steps or deadlock)."""
    from surge.preemption import PreemptionHandler

    class _Trainer:
        global_step = 0

    alone = PreemptionHandler(["SIGUSR1"], 143, grace=None)
    alone.install(distributed=False)
    try:
        assert alone.next_check == float("inf")
        os.kill(os.getpid(), signal.SIGUSR1)
        assert alone.received == signal.SIGUSR1 and alone.next_check == 0 and alone.due(_Trainer())
    finally:
        alone.uninstall()
    alone.install(distributed=False)  # a signal noted in an earlier fit is acted on at the next one's first step
    alone.uninstall()
    assert alone.next_check == 0

    ranks = PreemptionHandler(["SIGUSR1"], 143, grace=None)
    ranks.install(distributed=True)
    try:
        assert ranks.next_check == 0
        ranks.next_check = 40  # as an agreed check sets it
        os.kill(os.getpid(), signal.SIGUSR1)
        assert ranks.received == signal.SIGUSR1 and ranks.next_check == 40
    finally:
        ranks.uninstall()


@pytest.mark.parametrize("step_s", [0.003, 0.3])
def test_agreed_checks_start_in_the_background_and_wait_from_the_third_on_slow_steps(monkeypatch, step_s):
    """Several processes: the first checks of a fit are posted without waiting (waiting cost every rank the
    others' start-up skew); once the steps are measured slow (>= 0.25 s) each check is waited for at once.
    The all-reduce is stood in for by this one rank's proposal; the clock advances ``step_s`` per step."""
    import torch

    import surge.preemption as preemption

    clock = [100.0]
    monkeypatch.setattr(preemption.time, "monotonic", lambda: clock[0])
    handler = preemption.PreemptionHandler(["SIGUSR1"], 143, grace=None)
    waited_at, trainer = [], type("T", (), {"global_step": 0})()

    class Done:
        def wait(self):
            waited_at.append((trainer.global_step, posting[0]))

    posting = [False]

    def post(self, _trainer, proposal):
        flag, interval, blocking = proposal
        posting[0] = True
        return Done(), torch.tensor([flag, -interval, blocking])

    monkeypatch.setattr(preemption.PreemptionHandler, "_post", post)
    handler.install(distributed=True)
    slow = step_s >= 0.25
    try:
        decisions = []
        for step in range(1, 9):
            clock[0] += step_s
            trainer.global_step = step
            if slow and step == 5:
                os.kill(os.getpid(), signal.SIGUSR1)  # arrives during step 5
            posting[0] = False
            if step >= handler.next_check:
                decisions.append((step, handler.due(trainer)))
                if decisions[-1][1]:
                    break
    finally:
        handler.uninstall(wait=False)
    # A wait right after this step's own post (True) is a blocking check; False: the previous check's post read.
    blocking_steps = [step for step, after_own_post in waited_at if after_own_post]
    if not slow:  # checks at steps 1, 2 and 3, none waited for; then every 100 steps (0.5 s / 3 ms, capped)
        assert decisions == [(1, False), (2, False), (3, False)] and blocking_steps == []
        assert handler.next_check == 103
    else:  # every step; waited for from the third check on; the signal of step 5 stops the run at step 5
        assert [s for s, _ in decisions] == [1, 2, 3, 4, 5] and blocking_steps == [3, 4, 5]
        assert decisions[-1] == (5, True)


def test_preemption_arguments_are_checked_at_construction():
    def trainer(**kw):
        return surge.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, **kw)

    for bad in (0.5, True, "SIGFOO", [9], "SIGKILL", signal.SIGSTOP, ["SIGTERM", 2.0], 0, {"SIGTERM": 1}):
        with pytest.raises(MisconfigurationError, match="preemption_signals") as err:
            trainer(preemption_signals=bad)
        assert repr(bad) in str(err.value) and "signal name" in str(err.value)
    with pytest.raises(MisconfigurationError, match="SIGKILL.*cannot be caught"):
        trainer(preemption_signals=[signal.SIGTERM, 9])
    accepted = {"SIGUSR1": [signal.SIGUSR1], 15: [signal.SIGTERM], signal.SIGUSR2: [signal.SIGUSR2],
                ("SIGTERM", "USR1", 12): [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2], (): [], None: []}
    for given, signals in accepted.items():
        assert trainer(preemption_signals=given)._preemption.signals == signals
    for bad in (0, -1.0, "30", True, float("nan")):
        with pytest.raises(MisconfigurationError, match=r"preemption_grace.*seconds"):
            trainer(preemption_grace=bad)
    assert trainer(preemption_grace=None)._preemption.grace is None
    assert trainer()._preemption.grace == 30.0


# ---------------------------------------------------------------------- the grace period (one process)
GRACE = r'''
import os, signal, sys, time
import torch
from torch.utils.data import DataLoader, TensorDataset
import surge

out = sys.argv[1]


class Net(surge.Module):
    def __init__(self, signal_at, stuck, slow_save):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.signal_at, self.stuck, self.slow_save, self.signalled = signal_at, stuck, slow_save, False

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == self.signal_at and not self.signalled:
            self.signalled = True
            with open(os.path.join(out, "signalled"), "w") as f:
                f.write(repr(time.time()))
            os.kill(os.getpid(), signal.SIGTERM)  # what `timeout` or a scheduler sends
            if self.stuck:
                time.sleep(600)  # stuck (a dead file system, a deadlock): no step boundary ever comes
        return self.layer(batch[0]).pow(2).mean()

    def on_save_checkpoint(self, checkpoint):
        if self.signalled:
            time.sleep(self.slow_save)  # a large checkpoint: written for longer than the grace period

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(name, **kw):
    ckpt = surge.callbacks.ModelCheckpoint(dirpath=os.path.join(out, name), every_n_train_steps=2, save_last=True)
    trainer = surge.Trainer(accelerator="cpu", max_epochs=1, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                            enable_model_summary=False, preemption_grace=1.5, requeue_exit_code=77)
    trainer.fit(Net(**kw), DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=4))


# 1. Signalled in step 5; the preemption save after it takes 2 s, longer than the grace period: it is not
#    cut, the run saves and leaves with the requeue code.
try:
    fit("slow", signal_at=4, stuck=False, slow_save=2.0)
except SystemExit as e:
    print(f"slow save: SystemExit {e.code}", flush=True)
# 2. Signalled in step 6, which never ends: after the grace period the process leaves with the requeue code.
fit("stuck", signal_at=5, stuck=True, slow_save=0.0)
print("the stuck step returned", flush=True)
'''


def test_a_step_that_never_ends_exits_with_the_requeue_code_after_the_grace_period(tmp_path):
    from surge.checkpoint import load_checkpoint

    script = tmp_path / "grace.py"
    script.write_text(GRACE)
    proc = _start([sys.executable, str(script), str(tmp_path)], tmp_path)
    stdout, stderr, _ = _finish(proc, tmp_path, timeout=90)
    ended = time.time()
    # 1. a save that outlives the grace period is finished, not cut
    assert "slow save: SystemExit 77" in stdout, stdout + stderr[-3000:]
    assert load_checkpoint(str(tmp_path / "slow" / "last.ckpt"))["global_step"] == 5
    # 2. the stuck step: exit code 77, 1.5 s after the signal (plus the exit), without a save, said in one line
    assert proc.returncode == 77, (proc.returncode, stderr[-3000:])
    assert "the stuck step returned" not in stdout
    took = ended - float((tmp_path / "signalled").read_text())
    assert 1.5 <= took < 10, took
    lines = [line for line in stderr.splitlines() if "preemption_grace" in line]
    assert len(lines) == 1 and "got SIGTERM" in lines[0] and "did not save" in lines[0], stderr[-3000:]
    assert "intact" in lines[0] and "exiting with code 77" in lines[0]
    # the checkpoint written before the signal (step 4) is whole and loads; nothing was written after it
    assert load_checkpoint(str(tmp_path / "stuck" / "last.ckpt"))["global_step"] == 4


# ---------------------------------------------------------------------- an agreed, prompt save under DDP
PREEMPT = r'''
import atexit, os, sys, time
import torch
from torch.utils.data import DataLoader, TensorDataset
import surge

out = sys.argv[1]
rank = int(os.environ.get("RANK", 0))
with open(os.path.join(out, f"rank{rank}-pid"), "w") as f:
    f.write(str(os.getpid()))
open(os.path.join(out, f"pid-{os.getpid()}"), "w").close()
# written only by a normal interpreter exit: a rank killed by a signal while leaving never writes it
atexit.register(lambda: open(os.path.join(out, f"rank{rank}-exited"), "w").close())


class Net(surge.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        time.sleep(0.3)  # slow steps: a decision 10-20 steps late would overrun a scheduler's grace period
        return self.layer(batch[0]).pow(2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if rank == 0:
            with open(os.path.join(out, "steps"), "a") as f:
                f.write(f"{self.trainer.global_step}\n")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


ckpt = surge.callbacks.ModelCheckpoint(dirpath=os.path.join(out, "ckpt"))
trainer = surge.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=60, callbacks=[ckpt], logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Net(), DataLoader(TensorDataset(torch.randn(1024, 4)), batch_size=4))
'''


def _preempt(tmp_path, cmd, signal_every_rank):
    """Start PREEMPT, SIGTERM it once rank 0 finished step 3, return (stdout, stderr, last step seen, saved step)."""
    from surge.checkpoint import load_checkpoint

    script = tmp_path / "preempt.py"
    script.write_text(PREEMPT)
    proc = _start([*cmd, str(script), str(tmp_path)], tmp_path)
    steps, seen = tmp_path / "steps", 0
    try:
        deadline = time.monotonic() + 60
        while seen < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            seen = int(steps.read_text().split()[-1]) if steps.exists() and steps.read_text().strip() else 0
        assert seen >= 3, "training never reached step 3"
        if signal_every_rank:  # as SLURM does: every process of the job gets the signal
            for r in (0, 1):
                os.kill(int((tmp_path / f"rank{r}-pid").read_text()), signal.SIGTERM)
        else:  # the launcher only (torchrun's agent): it passes the signal on
            proc.send_signal(signal.SIGTERM)
    finally:
        stdout, stderr, _ = _finish(proc, tmp_path, timeout=60)
    saved = load_checkpoint(str(tmp_path / "ckpt" / "last.ckpt"))["global_step"]
    return proc, stdout, stderr, seen, saved


def test_sigterm_to_every_rank_saves_within_two_steps_and_every_rank_leaves_normally(tmp_path):
    proc, stdout, stderr, seen, saved = _preempt(tmp_path, [sys.executable], signal_every_rank=True)
    assert proc.returncode == 143, (proc.returncode, stderr[-3000:])
    # the ranks agree on the step to stop at within two steps of the signal (it was 12-18 steps later)
    assert seen <= saved <= seen + 2, (seen, saved)
    # the launcher let the other rank finish its own exit: no second SIGTERM killed it on its way out
    assert (tmp_path / "rank0-exited").exists() and (tmp_path / "rank1-exited").exists(), stderr[-3000:]


def test_sigterm_to_the_torchrun_agent_exits_with_the_requeue_code_after_a_prompt_save(tmp_path):
    cmd = [sys.executable, "-m", "surge.torchrun", *TORCHRUN[3:]]
    proc, stdout, stderr, seen, saved = _preempt(tmp_path, cmd, signal_every_rank=False)
    # torch's own launcher exits 1 here (SignalException); surge.torchrun reports what the workers did
    assert proc.returncode == 143, (proc.returncode, stderr[-3000:])
    assert "surge.torchrun: got SIGTERM; 2 workers saved a checkpoint and exited with 143" in stderr, stderr[-3000:]
    assert seen <= saved <= seen + 2, (seen, saved)


# ---------------------------------------------------------------------- rank faults leave no process behind
FAULT = r'''
import os, sys, time
from datetime import timedelta
import torch
from torch.utils.data import DataLoader, Dataset
import surge
from surge.strategies.ddp import DDP

out, hang_rank, fail_rank, how = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rank = int(os.environ.get("RANK", 0))


def note_pid(_=None):
    open(os.path.join(out, f"pid-{os.getpid()}"), "w").close()


class Stuck(Dataset):
    """Rank ``hang_rank``'s DataLoader worker never returns a sample of batch 3 (a dead file system, say)."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        if rank == hang_rank and i >= 12:  # rank r reads samples r, r + 2, ... in batches of 2
            time.sleep(600)
        return torch.full((4,), float(i))


class Net(surge.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 3 and rank == fail_rank:
            if how == "raise":
                raise RuntimeError(f"rank {rank} fails on purpose")
            sys.stderr.flush()
            os._exit(3)  # gone without any cleanup
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


note_pid()
# A long process-group timeout: only the launchers' handling of the fault can end this run in time.
trainer = surge.Trainer(accelerator="cpu", devices=2, strategy=DDP(timeout=timedelta(seconds=120)), max_epochs=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Net(), DataLoader(Stuck(), batch_size=2, num_workers=1, worker_init_fn=note_pid))
'''


@pytest.mark.parametrize("launcher,hang_rank,fail_rank,how", [
    ("surge", 1, 0, "raise"), ("surge", 0, 1, "exit"), ("torchrun", 1, 0, "raise"), ("torchrun", 0, 1, "exit")])
def test_a_rank_stuck_in_a_dataloader_worker_leaves_no_process_behind(tmp_path, launcher, hang_rank, fail_rank, how):
    script = tmp_path / "fault.py"
    script.write_text(FAULT)
    cmd = [sys.executable] if launcher == "surge" else list(TORCHRUN)
    start = time.monotonic()
    proc = _start([*cmd, str(script), str(tmp_path), str(hang_rank), str(fail_rank), how], tmp_path)
    stdout, stderr, survivors = _finish(proc, tmp_path, timeout=45)
    took = time.monotonic() - start
    assert proc.returncode != 0
    assert not survivors, f"processes of the job outlived it: {survivors}"
    assert took < 30, took  # the job ended and its output reached EOF: nobody holds stdout/stderr
    assert len(_pids(tmp_path)) == 4, _pids(tmp_path)  # two ranks and their DataLoader workers
    if how == "raise":
        assert f"rank {fail_rank} fails on purpose" in stderr
