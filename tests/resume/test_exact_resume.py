"""Golden tests for exact resume: a run killed with SIGKILL and restarted with ckpt_path="last" logs, after
the restart, exactly the losses (bit for bit) of an uninterrupted run at the same epoch and batch."""
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import os, signal, sys
    import torch, torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    import surge

    class Noisy(Dataset):
        """Map-style data whose items draw random numbers (augmentation) from the global RNG."""
        def __init__(self, n=96):
            g = torch.Generator().manual_seed(7)
            self.x = torch.randn(n, 12, generator=g); self.y = (self.x[:, 0] > 0).long()
        def __len__(self): return len(self.x)
        def __getitem__(self, i):
            # Augmentation from the global RNG runs in this process only; inside worker processes each
            # worker's own stream depends on which batches it served, so there it is left out (documented).
            noise = 0.01 * torch.randn(12) if torch.utils.data.get_worker_info() is None else 0.0
            return self.x[i] + noise, self.y[i]

    class Net(surge.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))
        def training_step(self, batch, i):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            if self.trainer.is_global_zero:
                with open(os.environ["LOSSES"], "a") as f:
                    f.write(f"{self.current_epoch} {i} {loss.item().hex()}\\n")
            kill = int(os.environ.get("KILL_AT", "-1"))
            once = os.environ.get("KILL_ONCE_MARKER")
            if self.global_step == kill and self.trainer.global_rank == int(os.environ.get("KILL_RANK", "0")) \
                    and not (once and os.path.exists(once)):
                if once:
                    open(once, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            if os.environ.get("SLEEP"):
                import time; time.sleep(float(os.environ["SLEEP"]))
            return loss
        def validation_step(self, batch, i):
            self.log("val_loss", F.cross_entropy(self.net(batch[0]), batch[1]))
        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=1e-2)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)]

    if __name__ == "__main__":
        surge.seed_everything(11, workers=True)
        workers, accumulate, devices = (int(os.environ[k]) for k in ("WORKERS", "ACCUMULATE", "DEVICES"))
        train = DataLoader(Noisy(), batch_size=8, shuffle=True, num_workers=workers)
        val = DataLoader(Noisy(32), batch_size=16, num_workers=0)
        ckpt = surge.ModelCheckpoint(every_n_train_steps=int(os.environ["EVERY"]), save_last=True, save_top_k=0)
        trainer = surge.Trainer(max_epochs=3, accelerator="cpu", devices=devices, callbacks=[ckpt],
                                accumulate_grad_batches=accumulate, val_check_interval=0.5,
                                default_root_dir=os.environ["ROOT"], enable_progress_bar=False,
                                enable_model_summary=False, logger=False)
        trainer.fit(Net(), train, val, ckpt_path="last")
''')


def _env(tmp_path, name, env_extra):
    root = tmp_path / name
    root.mkdir(exist_ok=True)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    return script, root, {**os.environ, "ROOT": str(root), "LOSSES": str(root / "losses.txt"), **env_extra}


def _run(tmp_path, name, env_extra, expect_kill=False, launcher=()):
    script, root, env = _env(tmp_path, name, env_extra)
    proc = subprocess.run([*launcher, sys.executable, str(script)] if not launcher else [*launcher, str(script)],
                          env=env, capture_output=True, text=True, timeout=180)
    if expect_kill:
        assert proc.returncode != 0, "the run was expected to be killed"
    else:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return root / "losses.txt"


def _read(path):
    rows = [line.split() for line in path.read_text().splitlines()]
    return [((int(e), int(i)), float.fromhex(v)) for e, i, v in rows]


@pytest.mark.parametrize("workers,accumulate,devices,kill_at", [
    (0, 1, 1, 13),   # single process, shuffled, augmentation and dropout from the global RNG
    (2, 1, 1, 9),    # two DataLoader worker processes
    (0, 2, 1, 7),    # gradient accumulation: killed inside an accumulation window
    (0, 1, 2, 8),    # 2-process DDP, rank 1 killed
])
def test_killed_run_resumes_bit_for_bit(tmp_path, workers, accumulate, devices, kill_at):
    env = {"WORKERS": str(workers), "ACCUMULATE": str(accumulate), "DEVICES": str(devices), "EVERY": "4"}
    golden = dict(_read(_run(tmp_path, "a", env)))
    env_b = {**env, "KILL_AT": str(kill_at), "KILL_RANK": "1" if devices > 1 else "0"}
    losses = _run(tmp_path, "b", env_b, expect_kill=True)
    before = len(_read(losses))
    _run(tmp_path, "b", env)  # the restart: same command, ckpt_path="last"
    rows = _read(losses)
    after = rows[before:]
    assert after, "the restarted run logged nothing"
    first = after[0][0]
    assert first != (0, 0), "the restart began from scratch instead of from the checkpoint"
    for key, value in after:
        assert value == golden[key], f"loss at (epoch, batch)={key} differs after resume: {value!r} vs {golden[key]!r}"
    assert after[-1][0] == max(golden), "the resumed run did not reach the end of training"
    # Nothing between the checkpoint and the end was skipped or trained twice.
    keys = [k for k, _ in after]
    assert keys == sorted(golden)[sorted(golden).index(first):]


def _check_continues(golden, rows, before):
    after = rows[before:]
    assert after and after[0][0] != (0, 0), "the restart began from scratch instead of from the checkpoint"
    for key, value in after:
        assert value == golden[key], f"loss at (epoch, batch)={key} differs after resume: {value!r} vs {golden[key]!r}"
    assert after[-1][0] == max(golden)


def test_sigterm_saves_exits_with_requeue_code_and_resumes_exactly(tmp_path):
    import signal
    import time

    env = {"WORKERS": "0", "ACCUMULATE": "1", "DEVICES": "1", "EVERY": "1000"}
    golden = dict(_read(_run(tmp_path, "a", env)))
    script, root, full_env = _env(tmp_path, "b", {**env, "SLEEP": "0.05"})
    losses = root / "losses.txt"
    proc = subprocess.Popen([sys.executable, str(script)], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and (not losses.exists() or len(losses.read_text().splitlines()) < 7):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, (proc.returncode, err[-3000:])
    assert "saved" in out + err and "last.ckpt" in out + err
    ckpts = list(root.rglob("last.ckpt"))
    assert len(ckpts) == 1
    before = len(_read(losses))
    assert before < len(golden), "the run finished before the signal arrived"
    _run(tmp_path, "b", env)
    _check_continues(golden, _read(losses), before)


def test_torchrun_max_restarts_recovers_a_killed_worker(tmp_path):
    env = {"WORKERS": "0", "ACCUMULATE": "1", "DEVICES": "1", "EVERY": "3"}
    golden = dict(_read(_run(tmp_path, "a", env)))
    marker = tmp_path / "killed-once"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "--max-restarts", "2")
    _run(tmp_path, "b", {**env, "KILL_AT": "10", "KILL_ONCE_MARKER": str(marker)}, launcher=launcher)
    assert marker.exists(), "the worker was never killed"
    rows = _read(tmp_path / "b" / "losses.txt")
    # The killed attempt logged steps up to the kill; the restarted one continued from the last checkpoint.
    restart = next(n for n in range(1, len(rows)) if rows[n][0] <= rows[n - 1][0])
    _check_continues(golden, rows, restart)


# (The SIGKILL-during-saves loop moved to tests/reliability/test_checkpoint_commit.py, with 30 kills and
# the cleanup of the temporaries they leave.)


def test_checkpoint_from_a_newer_format_or_truncated_is_refused_by_name(tmp_path):
    import torch

    from surge.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    newer = tmp_path / "newer.ckpt"
    save_checkpoint({"state_dict": {}, "surge_format_version": 99}, str(newer))
    with pytest.raises(CheckpointError, match=r"newer\.ckpt.*format version 99"):
        load_checkpoint(str(newer))
    whole = tmp_path / "whole.ckpt"
    save_checkpoint({"state_dict": {"w": torch.randn(1000)}}, str(whole))
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.ckpt.*(truncated|corrupt)"):
        load_checkpoint(str(cut))


def test_a_second_signal_ends_the_process_at_once(tmp_path):
    # A rank stuck in a collective never reaches the step boundary where the first signal is acted on;
    # the second one takes the signal's own action (termination) there and then.
    code = (
        "import os, signal, time\n"
        "from surge.preemption import PreemptionHandler\n"
        "h = PreemptionHandler(['SIGUSR1'], 143)\n"
        "h.install()\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "time.sleep(0.2)\n"
        "print('noted', h.received.name, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "time.sleep(10)\n"
        "print('still alive', flush=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines() == ["noted SIGUSR1"], (proc.stdout, proc.stderr[-2000:])
    import signal

    assert proc.returncode == -signal.SIGUSR1
