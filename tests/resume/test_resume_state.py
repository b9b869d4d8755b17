"""What a resume continues: each rank's own random state (DDP, FSDP, pipeline), and this run's own checkpoint.

Ranks draw different amounts of randomness (here: noise whose size depends on the rank, and under the pipeline
the last stage alone runs training_step), so a resumed run matches the uninterrupted one on every rank only if
each rank gets its own random state back. One 2-process launch runs every strategy: for each, the
uninterrupted run, a run stopped at step 3 (a checkpoint inside the first epoch) and its resume after a
disturbed random state; every rank records its loss and a digest of its random states at every step.

``ckpt_path="last"`` must mean this run's last checkpoint: runs started from one folder (alive at the same
time, killed and restarted in turn) each continue their own.
"""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import surge
from surge.demos.toy import ToyModel, ToyDataset

RANKS = textwrap.dedent(r'''
    import hashlib, json, os, random, sys
    import numpy as np
    import torch, torch.nn.functional as F
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    import surge
    from surge.demos.gpt import GPTConfig, GPTModule, stdlib_text_loader
    from surge.strategies import FSDP, Pipeline

    root = sys.argv[1]

    def digest():
        parts = [torch.get_rng_state().numpy().tobytes(), np.random.get_state()[1].tobytes(), repr(random.getstate())]
        return hashlib.sha1(b"".join(p if isinstance(p, bytes) else p.encode() for p in parts)).hexdigest()[:16]

    class Record(surge.Callback):
        def __init__(self):
            self.rows = []
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.rows.append([trainer.global_step, trainer.current_epoch, float(loss).hex(), digest()])

    def draws(module):
        # Randomness whose amount depends on the rank, from torch, NumPy and Python.
        r = module.global_rank
        noise = torch.randn(1 + 3 * r).mean() + float(np.random.rand(1 + 2 * r).mean()) + random.random() * r
        return 1e-3 * noise

    class Net(surge.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
        def training_step(self, batch, i):
            x, y = batch
            return F.mse_loss(self.net(x), y) + draws(self)
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class NoisyGPT(GPTModule):
        def training_step(self, batch, i):
            return super().training_step(batch, i) + draws(self)  # runs on the last stage only

    def parts(kind):
        if kind == "pipeline":
            model = NoisyGPT(GPTConfig.tiny(n_layer=2))
            return model, Pipeline(stages=2, microbatches=2), stdlib_text_loader(16, batch_size=4, limit=16 * 5,
                                                                                shuffle=True)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(40, 6, generator=g)
        data = DataLoader(TensorDataset(x, x[:, :1]), batch_size=4, shuffle=True)  # 5 steps per epoch per rank
        return Net(), (FSDP() if kind == "fsdp" else "ddp"), data

    def run(kind, phase, steps, ckpt_path=None):
        surge.seed_everything(3)  # (the DistributedSampler's shuffle seed: the same in a restarted run)
        if ckpt_path is not None:  # whatever the streams are before the resume, it puts back each rank's own
            torch.rand(5), np.random.rand(5), random.random()
        model, strategy, data = parts(kind)
        record = Record()
        callbacks = [record]
        if phase == "stopped":
            callbacks.append(surge.ModelCheckpoint(dirpath=f"{root}/{kind}", every_n_train_steps=3, save_top_k=-1))
        trainer = surge.Trainer(strategy=strategy, accelerator="cpu", devices=2, max_steps=steps, logger=False,
                                callbacks=callbacks, enable_checkpointing=phase == "stopped",
                                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(model, data, ckpt_path=ckpt_path)
        with open(f"{root}/{kind}-{phase}-rank{trainer.global_rank}.json", "w") as f:
            json.dump(record.rows, f)

    for kind in ("ddp", "fsdp", "pipeline"):
        run(kind, "uninterrupted", 8)
        run(kind, "stopped", 3)
        run(kind, "resumed", 8, ckpt_path=f"{root}/{kind}/epoch=0-step=3.ckpt")

    class Monitored(Net):
        # A monitored metric logged without sync_dist, better at every step on rank 0 and worse on rank 1:
        # the ranks would disagree on whether a step's checkpoint is among the best.
        def training_step(self, batch, i):
            step = float(self.global_step)
            self.log("m", -step if self.global_rank == 0 else step)
            return super().training_step(batch, i)

    checkpoint = surge.ModelCheckpoint(dirpath=f"{root}/topk", monitor="m", save_top_k=1, every_n_train_steps=1)
    trainer = surge.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=4, logger=False,
                            callbacks=[checkpoint], enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Monitored(), parts("ddp")[2])
    with open(f"{root}/topk-rank{trainer.global_rank}.json", "w") as f:
        json.dump({"best": checkpoint.best_model_path, "kept": sorted(checkpoint.best_k_models)}, f)
''')


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("rank_states")
    script = root / "ranks.py"
    script.write_text(RANKS)
    proc = subprocess.run([sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return root


def _rows(root, kind, phase, rank):
    return [tuple(r) for r in json.loads((root / f"{kind}-{phase}-rank{rank}.json").read_text())]


@pytest.mark.parametrize("kind", ["ddp", "fsdp", "pipeline"])
def test_every_rank_resumes_its_own_random_state(two_ranks, kind):
    for rank in (0, 1):
        golden = {row[0]: row for row in _rows(two_ranks, kind, "uninterrupted", rank)}
        resumed = _rows(two_ranks, kind, "resumed", rank)
        assert [row[0] for row in resumed] == [4, 5, 6, 7, 8], f"rank {rank} did not continue from step 3"
        for row in resumed:
            assert row == golden[row[0]], f"{kind} rank {rank} differs at step {row[0]} after the resume"
    # The check means something: the two ranks' random streams differ.
    assert _rows(two_ranks, kind, "uninterrupted", 0)[-1][3] != _rows(two_ranks, kind, "uninterrupted", 1)[-1][3]


def test_a_changed_world_size_is_one_line_saying_what_is_not_exact(two_ranks, capsys):
    from surge import resume

    ckpt = torch.load(two_ranks / "ddp" / "epoch=0-step=3.ckpt", weights_only=True)
    assert len(ckpt["rank_states"]) == 2
    assert torch.equal(resume.own_rank_state(ckpt, 1, 2)[0]["rng"]["torch"], ckpt["rank_states"][1]["rng"]["torch"])
    own, note = resume.own_rank_state(ckpt, 3, 4)
    assert own is ckpt["rank_states"][1] and "written by 2 processes and this run has 4" in note
    assert "\n" not in note and "cannot continue exactly" in note
    with pytest.raises(ValueError, match="rank_states must be a non-empty list of dicts"):
        resume.own_rank_state({**ckpt, "rank_states": [None]}, 0, 2)

    class Net(ToyModel):  # the DDP checkpoint's weights, resumed on one process
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                           torch.nn.Linear(16, 1))
            del self.layer

        def training_step(self, batch, i):
            return self.net(batch).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    trainer = surge.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
    trainer.fit(Net(), DataLoader(ToyDataset(6, 40), batch_size=4), ckpt_path=two_ranks / "ddp" / "epoch=0-step=3.ckpt")
    out = capsys.readouterr().out
    assert "written by 2 processes and this run has 1" in out
    assert f"resuming from {two_ranks / 'ddp' / 'epoch=0-step=3.ckpt'} at global step 3 (epoch 0, batch 3)" in out


# ---------------------------------------------------------------------- ckpt_path="last" is this run's
LAST = textwrap.dedent(r'''
    import os, signal, sys, time
    import surge
    from surge.demos.toy import ToyModel
    from surge.loggers import CSVLogger

    root, name = os.environ["ROOT"], os.environ["NAME"]

    class Control(surge.Callback):
        """Block at a step (before that step's checkpoint) until the test releases it, or kill the process there."""
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == int(os.environ.get("KILL_AT", -1)):
                os.kill(os.getpid(), signal.SIGKILL)
            if trainer.global_step == int(os.environ.get("BLOCK_AT", -1)):
                open(f"{root}/ready-{name}", "w").close()
                while not os.path.exists(f"{root}/release-{name}"):
                    time.sleep(0.02)

    trainer = surge.Trainer(max_steps=int(os.environ["STEPS"]), default_root_dir=root, logger=CSVLogger(root),
                            callbacks=[Control(), surge.ModelCheckpoint(every_n_train_steps=1, save_last=True, save_top_k=0)],
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(ToyModel(lr=float(os.environ["LR"])), ckpt_path="last")
''')


def _start(tmp_path, name, lr, steps=8, **env):
    env = {**os.environ, "ROOT": str(tmp_path), "NAME": name, "LR": str(lr), "STEPS": str(steps),
           **{k: str(v) for k, v in env.items()}}
    env.pop("SURGE_RUN_ID", None), env.pop("SLURM_JOB_ID", None)
    return subprocess.Popen([sys.executable, str(tmp_path / "last.py")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_ready(tmp_path, name, proc):
    deadline = time.time() + 120
    while not (tmp_path / f"ready-{name}").exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, f"{name} never reached its step"
        time.sleep(0.05)


def _finish(proc):
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


def _resumed_from(out):
    lines = [ln for ln in out.splitlines() if ln.startswith("surge: resuming from")]
    assert len(lines) <= 1, lines
    return lines[0] if lines else None


def test_last_is_this_runs_checkpoint_for_interleaved_and_restarted_runs(tmp_path):
    (tmp_path / "last.py").write_text(LAST)
    logs = tmp_path / "surge_logs"
    a = _start(tmp_path, "a", 0.1, BLOCK_AT=3)  # run A (lr 0.1) is alive, its step-2 checkpoint written
    _wait_ready(tmp_path, "a", a)
    code, out = _finish(_start(tmp_path, "b", 0.2, KILL_AT=3))  # run B (lr 0.2) starts beside it, then dies
    assert code == -9 and _resumed_from(out) is None, out[-3000:]
    a.kill()
    a.wait()
    # A restarted continues A's own version folder (B's is newer, with another lr) and stays alive.
    a2 = _start(tmp_path, "a2", 0.1, BLOCK_AT=6)
    _wait_ready(tmp_path, "a2", a2)
    # Meanwhile, side by side: a run like A (the same lr) is another run: A's folder is in use, so it starts
    # fresh; and B restarted continues B's own folder: not A's (alive), not the fresh run's (another lr).
    q, b2 = _start(tmp_path, "q", 0.1, steps=2), _start(tmp_path, "b2", 0.2, steps=5)
    code, out = _finish(q)
    assert code == 0 and _resumed_from(out) is None, out[-3000:]
    code, out = _finish(b2)
    assert code == 0, out[-3000:]
    assert _resumed_from(out) == f"surge: resuming from {logs / 'version_1' / 'checkpoints' / 'last.ckpt'} at " \
                                 f"global step 2 (epoch 0, batch 2)"
    (tmp_path / "release-a2").touch()
    code, out = _finish(a2)
    assert code == 0, out[-3000:]
    assert _resumed_from(out) == f"surge: resuming from {logs / 'version_0' / 'checkpoints' / 'last.ckpt'} at " \
                                 f"global step 2 (epoch 0, batch 2)"
    # Each run kept writing into its own version folder, to its end.
    for version, lr, step in ((0, 0.1, 8), (1, 0.2, 5), (2, 0.1, 2)):
        ckpt = torch.load(logs / f"version_{version}" / "checkpoints" / "last.ckpt", weights_only=True)
        assert (ckpt["hyper_parameters"]["lr"], ckpt["global_step"]) == (lr, step)
    assert sorted(os.listdir(logs)) == ["version_0", "version_1", "version_2"]


def test_a_run_id_tells_runs_with_equal_hyperparameters_apart(tmp_path, monkeypatch, capsys):
    def fit(run_id, steps):
        monkeypatch.setenv("SURGE_RUN_ID", run_id)
        trainer = surge.Trainer(max_steps=steps, default_root_dir=tmp_path, logger=surge.loggers.CSVLogger(tmp_path),
                                callbacks=[surge.ModelCheckpoint(every_n_train_steps=1, save_last=True, save_top_k=0)],
                                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(ToyModel(), ckpt_path="last")
        return trainer

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.warns(UserWarning, match="found no checkpoint of this run"):
        fit("job-1", 2)  # the first start: nothing to resume yet
    with pytest.warns(UserWarning, match=r"found no checkpoint of this run .*run id 'job-1', this run's is 'job-2'"):
        second = fit("job-2", 3)  # the same hyperparameters, another run: fresh, in a folder of its own
    assert second.ckpt_path is None and second.logger.version == 1
    third = fit("job-1", 4)  # job-1 again (a requeue): its own folder, although job-2's is newer
    assert third.ckpt_path == str(tmp_path / "surge_logs" / "version_0" / "checkpoints" / "last.ckpt")
    assert third.logger.version == 0 and third.global_step == 4


def test_ranks_agree_on_the_best_checkpoints_when_the_monitored_value_differs(two_ranks):
    """A monitored value logged without sync_dist differs across ranks; every rank builds each checkpoint
    (its random state goes in), so they must agree on which steps are saved: rank 0's value decides."""
    views = [json.loads((two_ranks / f"topk-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert views[0] == views[1]
    assert os.path.basename(views[0]["best"]) == "epoch=0-step=4.ckpt"  # rank 0's value improves at every step
    assert sorted(f for f in os.listdir(two_ranks / "topk") if not f.startswith(".")) == ["epoch=0-step=4.ckpt"]
