"""DDP tested for real: 2 processes with gloo on CPU, started the ways users start them.

Each test writes a small training script into ``tmp_path`` and runs it with ``sys.executable``, so
surge's own launcher starts the second rank (or torchrun does). Correctness is checked against math:
two processes on half batches end with the weights of one process on the whole batches.
"""
import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import surge
from surge.strategies.ddp import DDP
from surge.utils import MisconfigurationError

from launch_env import child_env

SCRIPT = r'''
import os, sys
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import surge
from surge.loggers import CSVLogger
from surge.utils import rank_zero_only

out, devices, accumulate, fail_rank = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
hang = len(sys.argv) > 5 and sys.argv[5] == "hang"


class Net(surge.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 5 and self.trainer.global_rank == fail_rank:
            if hang:  # alive but stuck: only the process-group timeout can end the run
                import time
                time.sleep(600)
            raise RuntimeError(f"rank {fail_rank} fails on purpose")
        x, y = batch
        loss = F.mse_loss(self(x), y)
        # The mean over ranks of (rank + 1): 1.5 with two ranks.
        self.log("rank_mean", torch.tensor(self.trainer.global_rank + 1.0), sync_dist=True, on_step=False, on_epoch=True)
        self.log("rank_max", torch.tensor(self.trainer.global_rank + 1.0), sync_dist=True, reduce_fx="max",
                 on_step=False, on_epoch=True)
        self.log("rank_local", torch.tensor(self.trainer.global_rank + 1.0), on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y), sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.mse_loss(self(x), y), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def data(n):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x[:, :1] * 2 - x[:, 1:2] + 0.1 * torch.randn(n, 1, generator=g))


model = Net()
logger = CSVLogger(os.path.join(out, "logs"), name="run")
from datetime import timedelta
from surge.strategies.ddp import DDP
strategy = DDP(timeout=timedelta(seconds=4)) if hang else "ddp" if devices > 1 else "auto"
trainer = surge.Trainer(accelerator="cpu", devices=devices, strategy=strategy,
                        max_steps=20, accumulate_grad_batches=accumulate, logger=logger,
                        callbacks=[surge.callbacks.EarlyStopping("val_loss", patience=100)],
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
# The global batch is 16: 8 per rank with two ranks.
trainer.fit(model, DataLoader(data(320), batch_size=16 // devices, shuffle=False),
            DataLoader(data(32), batch_size=8 // devices))
tested = trainer.test(model, DataLoader(data(48), batch_size=24 // devices), verbose=False)
# 45 samples: 23 per rank (one padded) in batches of 5, so each rank runs 5 steps
predicted = trainer.predict(model, DataLoader(data(45), batch_size=10 // devices))
torch.save({
    "predicted": predicted,
    "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
    "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
    "test": tested,
    "ranks": (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank, rank_zero_only.rank),
    "env_rank": os.environ.get("RANK"),
    "log_dir": trainer.log_dir,
    "ckpt_dir": trainer.checkpoint_callback.dirpath,
    "logger_wrote": logger._experiment is not None,
    "global_step": trainer.global_step,
    "val_batches": trainer.num_val_batches,
}, os.path.join(out, f"rank{trainer.global_rank}_of{trainer.world_size}.pt"))
'''


def _run(cmd, cwd, timeout=60):
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


def _train(tmp_path, name, devices, accumulate=1, fail_rank=-1, torchrun=False, timeout=60, hang=False):
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    args = [str(script), str(out), str(devices), str(accumulate), str(fail_rank)] + (["hang"] if hang else [])
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(devices), *args]
    else:
        cmd = [sys.executable, *args]
    proc, took = _run(cmd, tmp_path, timeout)
    return out, proc, took


def _load(out, rank, world):
    return torch.load(out / f"rank{rank}_of{world}.pt", weights_only=False)


def _assert_same_weights(a, b, tol=1e-5):
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= tol, f"weights differ by {worst:.3g}"


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """The one-process reference run for an ``accumulate_grad_batches`` value (run once per module)."""
    cache = {}

    def get(accumulate):
        if accumulate not in cache:
            out, proc, _ = _train(tmp_path_factory.mktemp(f"single{accumulate}"), "single", 1, accumulate)
            assert proc.returncode == 0, proc.stderr
            cache[accumulate] = _load(out, 0, 1)
        return cache[accumulate]

    return get


@pytest.mark.parametrize("accumulate", [1, 2])
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, accumulate, single_run):
    ddp, proc, _ = _train(tmp_path, "ddp", 2, accumulate)
    assert proc.returncode == 0, proc.stderr
    one, r0, r1 = single_run(accumulate), _load(ddp, 0, 2), _load(ddp, 1, 2)
    assert r0["global_step"] == r1["global_step"] == one["global_step"] == 20
    _assert_same_weights(r0["weights"], one["weights"])
    _assert_same_weights(r1["weights"], r0["weights"], tol=0.0)  # the replicas stay identical
    # Evaluation is split across ranks too, and its sync_dist mean is the mean over the whole test set.
    assert abs(r0["test"][0]["test_loss"] - one["test"][0]["test_loss"]) < 1e-5
    assert r0["test"] == r1["test"]
    # Predictions come back on every rank in dataset order, one global batch per step, padding removed.
    assert [len(p) for p in r0["predicted"]] == [len(p) for p in one["predicted"]] == [10, 10, 10, 10, 5]
    for predicted in (r0["predicted"], r1["predicted"]):
        assert (torch.cat(predicted) - torch.cat(one["predicted"])).abs().max() < 1e-5
    assert abs(r0["metrics"]["val_loss"] - one["metrics"]["val_loss"]) < 1e-5
    assert r0["metrics"]["val_loss"] == r1["metrics"]["val_loss"]
    assert r0["val_batches"] == one["val_batches"] == [4]  # 32 samples: 4 batches of 8 or 2 x 4 batches of 4

    # Ranks come from the strategy; the launcher told the child who it is.
    assert r0["ranks"] == (2, 0, 0, 0, 0) and r1["ranks"] == (2, 1, 1, 0, 1)
    assert (r0["env_rank"], r1["env_rank"]) == ("0", "1")


def test_sync_dist_logging_and_rank_zero_files(tmp_path):
    out, proc, _ = _train(tmp_path, "ddp", 2)
    assert proc.returncode == 0, proc.stderr
    r0, r1 = _load(out, 0, 2), _load(out, 1, 2)
    for r in (r0, r1):
        assert r["metrics"]["rank_mean"] == pytest.approx(1.5)  # (1 + 2) / 2
        assert r["metrics"]["rank_max"] == pytest.approx(2.0)
    assert r0["metrics"]["rank_local"] == 1.0 and r1["metrics"]["rank_local"] == 2.0  # no sync: each its own

    # One log folder, decided by rank 0 and the same on both ranks; only rank 0 wrote into it.
    assert r0["log_dir"] == r1["log_dir"] == str(out / "logs" / "run" / "version_0")
    assert r0["ckpt_dir"] == r1["ckpt_dir"]
    assert sorted(os.listdir(out / "logs" / "run")) == ["version_0"]
    assert r0["logger_wrote"] and not r1["logger_wrote"]
    ckpts = os.listdir(os.path.join(r0["log_dir"], "checkpoints"))
    assert "last.ckpt" in ckpts
    ckpt = torch.load(os.path.join(r0["log_dir"], "checkpoints", "last.ckpt"), weights_only=False)
    assert set(ckpt["state_dict"]) == set(r0["weights"])  # the user's keys, no DDP "module." prefix


def test_torchrun_launch(tmp_path, single_run):
    out, proc, _ = _train(tmp_path, "torchrun", 2, torchrun=True)
    assert proc.returncode == 0, proc.stderr
    r0, r1 = _load(out, 0, 2), _load(out, 1, 2)
    assert r0["ranks"] == (2, 0, 0, 0, 0) and r1["ranks"] == (2, 1, 1, 0, 1)
    _assert_same_weights(r0["weights"], single_run(1)["weights"])


@pytest.mark.parametrize("fail_rank", [1, 0])
def test_a_failing_rank_ends_the_whole_run_quickly(tmp_path, fail_rank):
    out, proc, took = _train(tmp_path, f"fail{fail_rank}", 2, fail_rank=fail_rank, timeout=30)
    assert proc.returncode != 0
    assert f"rank {fail_rank} fails on purpose" in proc.stderr
    assert took < 30
    assert not list(out.glob("rank*.pt"))


def test_a_hanging_rank_ends_the_run_at_the_process_group_timeout(tmp_path):
    out, proc, took = _train(tmp_path, "hang", 2, fail_rank=1, timeout=90, hang=True)
    assert proc.returncode != 0
    # 4 s of process-group timeout, up to 5 s spent asking the other ranks where they were, and the
    # start-up of two processes on a loaded 2-core machine; a hang would run into the 90 s limit.
    assert took < 45
    assert not list(out.glob("rank*.pt"))


# ---------------------------------------------------------------------- in-process pieces (no processes)
def _ddp(world, rank, use_sampler=True):
    strategy = DDP()
    strategy.configure("cpu", list(range(world)), 1, "32-true")
    strategy.cluster.world_size, strategy.cluster.global_rank = world, rank
    strategy.use_distributed_sampler = use_sampler
    return strategy


def test_process_dataloader_keeps_the_users_shuffle_choice(monkeypatch):
    monkeypatch.setenv("SURGE_GLOBAL_SEED", "7")
    data = TensorDataset(torch.arange(10.0))
    plain = _ddp(2, 1).process_dataloader(DataLoader(data, batch_size=2, shuffle=False), "train")
    assert isinstance(plain.sampler, DistributedSampler) and not plain.sampler.shuffle
    assert list(plain.sampler) == [1, 3, 5, 7, 9]
    shuffled = _ddp(2, 0).process_dataloader(DataLoader(data, batch_size=2, shuffle=True), "train")
    assert shuffled.sampler.shuffle and shuffled.sampler.seed == 7
    other = _ddp(2, 1).process_dataloader(DataLoader(data, batch_size=2, shuffle=True), "train")
    assert sorted(list(shuffled.sampler) + list(other.sampler)) == list(range(10))  # disjoint shares
    # Evaluation never shuffles; use_distributed_sampler=False leaves the loader alone.
    assert not _ddp(2, 0).process_dataloader(DataLoader(data, batch_size=2, shuffle=True), "val").sampler.shuffle
    loader = DataLoader(data, batch_size=2)
    assert _ddp(2, 0, use_sampler=False).process_dataloader(loader, "train") is loader


def test_process_dataloader_leaves_iterable_datasets(monkeypatch):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(4))

    loader = DataLoader(Stream(), batch_size=2)
    assert _ddp(2, 0).process_dataloader(loader, "val") is loader
    # Training: the same data, in a loader that ends the epoch on every rank when one runs out (uneven shards)
    from surge.strategies.uneven import EvenBatchesLoader

    train = _ddp(2, 0).process_dataloader(loader, "train")
    assert isinstance(train, EvenBatchesLoader) and train.dataset is loader.dataset and train.batch_size == 2


def test_arguments_are_checked():
    with pytest.raises(MisconfigurationError, match="timeout"):
        DDP(timeout=30)
    with pytest.raises(MisconfigurationError, match="process_group_backend"):
        DDP(process_group_backend="tcp")
    assert isinstance(surge.Trainer(strategy="ddp", accelerator="cpu", devices=2, logger=False).strategy, DDP)
    assert DDP(timeout=timedelta(seconds=5)).timeout == timedelta(seconds=5)


def test_launcher_started_more_processes_than_asked(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(MisconfigurationError, match="started 4 processes"):
        surge.Trainer(strategy="ddp", accelerator="cpu", devices=2, logger=False)


def test_slurm_environment(monkeypatch):
    from surge.launch import detect_environment, first_slurm_host

    for key, value in {"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
                       "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "1234"}.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    env = detect_environment(devices=2, num_nodes=2)
    assert (env.kind, env.world_size, env.global_rank, env.local_rank, env.node_rank) == ("slurm", 4, 3, 1, 1)
    assert env.main_address == "gpu07" and env.main_port == 10000 + 1234
    assert first_slurm_host("a1,b2") == "a1" and first_slurm_host("n[3,5-6]") == "n3"
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation: not launched by srun
    assert detect_environment(devices=2, num_nodes=1).kind == "local"
