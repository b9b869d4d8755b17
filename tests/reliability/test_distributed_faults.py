"""Distributed faults with real processes (gloo on CPU): uneven data, rank-dependent logging, a hanging rank,
a soak with SIGKILLs. Every process runs under a subprocess timeout: a regression fails the test, never hangs CI."""
import os
import random
import subprocess
import sys
import time

import pytest
import torch

CLEAN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR", "TORCHELASTIC_RUN_ID",
             "SURGE_LAUNCHER_PID", "NODE_RANK", "GROUP_RANK")


def _run(cmd, cwd, timeout):
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


SCRIPT = r'''
import os, sys
from datetime import timedelta
import torch
from torch.utils.data import DataLoader, IterableDataset
import surge
from surge.strategies.ddp import DDP

case, out = sys.argv[1], sys.argv[2]
timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0


class Uneven(IterableDataset):
    """Rank r yields 3 + 2r batches' worth of samples: the ranks disagree on the epoch length."""

    def __iter__(self):
        rank = int(os.environ.get("RANK", 0))
        g = torch.Generator().manual_seed(rank)
        for _ in range((3 + 2 * rank) * 4):
            yield torch.randn(32, generator=g)


class Net(surge.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(32, 2)

    def training_step(self, batch, batch_idx):
        rank = self.trainer.global_rank
        loss = self.layer(batch).pow(2).mean()
        if case == "keys_epoch":
            # different keys per rank, a key on rank 0 only, different counts per rank
            self.log(f"only_rank{rank}", float(rank + 1), sync_dist=True, on_step=False, on_epoch=True)
            self.log("shared_sum", 1.0, sync_dist=True, on_step=False, on_epoch=True, reduce_fx="sum")
            if rank == 0 and batch_idx == 0:
                self.log("rank0_max", 7.0, sync_dist=True, on_step=False, on_epoch=True, reduce_fx="max")
        if case == "keys_step":
            self.log(f"step_key_rank{rank}", float(rank), sync_dist=True, on_step=True, on_epoch=False)
        if case == "partial_step" and rank == 0 and batch_idx == 1:  # a step value on one rank only
            self.log("only_rank0_step", 1.0, sync_dist=True, on_step=True, on_epoch=False)
        if case == "stop_early" and rank == 1 and batch_idx == 2:  # one rank asks to stop, the other does not
            self.trainer.should_stop = True
        if case == "reduce_conflict":
            self.log("acc", float(rank), sync_dist=True, on_step=False, on_epoch=True,
                     reduce_fx="max" if rank == 0 else "mean")
        return loss

    def on_train_epoch_end(self):
        if case == "keys_epoch" and self.trainer.global_rank == 1:
            self.log("from_epoch_end_rank1", 5.0, sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


data = DataLoader(Uneven(), batch_size=4)
if not case.startswith("uneven"):
    from torch.utils.data import TensorDataset
    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, 32, generator=g)), batch_size=4, collate_fn=lambda b: torch.stack([x[0] for x in b]))
if case == "uneven_accumulate_fsdp":
    from surge.strategies.fsdp import FSDP
    strategy = FSDP(timeout=timedelta(seconds=timeout))
else:
    strategy = DDP(timeout=timedelta(seconds=timeout))
trainer = surge.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=2,
                        accumulate_grad_batches=2 if case.startswith("uneven_accumulate") else 1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1)
trainer.fit(Net(), data)
torch.save({"step": trainer.global_step, "epoch": trainer.current_epoch,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            # FSDP holds shards (DTensors): compare the whole parameters
            "weights": {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).clone()
                        for k, v in trainer.module.state_dict().items()}},
           os.path.join(out, f"rank{trainer.global_rank}.pt"))
'''


def _ddp(tmp_path, case, timeout=60, pg_timeout=20):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    proc = _run([sys.executable, str(script), case, str(tmp_path), str(pg_timeout)], tmp_path, timeout)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2) if (tmp_path / f"rank{r}.pt").exists()]
    return proc, results


def test_uneven_iterable_data_ends_the_epoch_on_every_rank_together(tmp_path):
    proc, results = _ddp(tmp_path, "uneven")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0 has 3 batches, rank 1 has 5: every epoch ends after 3 on both, 2 epochs
    assert [r["step"] for r in results] == [6, 6]
    for k in results[0]["weights"]:
        assert torch.equal(results[0]["weights"][k], results[1]["weights"][k])


def test_uneven_iterable_data_with_accumulation_steps_with_synchronised_gradients(tmp_path):
    # rank 0 has 3 batches, rank 1 has 5; windows of 2: the epoch ends after batch 2 on both ranks,
    # inside the second window, whose gradients (of one micro-batch) must still be all-reduced
    (tmp_path / "ddp").mkdir()
    proc, results = _ddp(tmp_path / "ddp", "uneven_accumulate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in results] == [4, 4]  # 2 steps per epoch (one full window, one cut short), 2 epochs
    for k in results[0]["weights"]:
        assert torch.equal(results[0]["weights"][k], results[1]["weights"][k]), k
    # FSDP: each rank steps only its own shard, so the ranks always agree; the reduce-scatter switched
    # back on for that last micro-batch shows in the weights matching DDP's
    (tmp_path / "fsdp").mkdir()
    proc, sharded = _ddp(tmp_path / "fsdp", "uneven_accumulate_fsdp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in sharded] == [4, 4]
    for k, v in results[0]["weights"].items():
        torch.testing.assert_close(sharded[0]["weights"][k], v, rtol=0, atol=1e-6, msg=k)


def test_different_keys_on_different_ranks_reduce_the_union_at_epoch_end(tmp_path):
    proc, results = _ddp(tmp_path, "keys_epoch")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for r in results:  # every rank sees every key, reduced over the ranks that logged it
        m = r["metrics"]
        assert m["only_rank0"] == 1.0 and m["only_rank1"] == 2.0
        assert m["shared_sum"] == 16.0  # 8 batches per rank per epoch, summed over 2 ranks
        assert m["rank0_max"] == 7.0 and m["from_epoch_end_rank1"] == 5.0


def test_different_step_keys_with_sync_dist_are_a_clear_error_not_a_hang(tmp_path):
    proc, results = _ddp(tmp_path, "keys_step")
    assert proc.returncode != 0 and not results
    assert "step_key_rank" in proc.stderr and "met a different self.log(..., sync_dist=True)" in proc.stderr


def test_a_step_value_logged_with_sync_dist_on_one_rank_only_is_named_at_the_timeout(tmp_path):
    # rank 0 waits in the all_gather of its step value, rank 1 in DDP's gradient all-reduce: both time
    # out (DDP(timeout=10 s)), find each other's place in the rendezvous store and say so
    start = time.monotonic()
    proc, results = _ddp(tmp_path, "partial_step", timeout=90, pg_timeout=10)
    assert proc.returncode != 0 and not results
    assert time.monotonic() - start < 75
    assert "the all_gather of the step value self.log('only_rank0_step', sync_dist=True) failed" in proc.stderr \
        or "rank 1 of 2: the gradient synchronisation in backward failed" in proc.stderr, proc.stderr[-3000:]
    assert ("rank(s) [0] in the all_gather of the step value self.log('only_rank0_step', sync_dist=True); "
            "rank(s) [1] in the gradient synchronisation in backward") in proc.stderr, proc.stderr[-3000:]


def test_one_rank_stopping_early_is_named_at_the_timeout_not_a_hang(tmp_path):
    # rank 1 sets trainer.should_stop at batch 2 and leaves the epoch; rank 0 trains on: both time out
    # (DDP(timeout=10 s)) in different collectives, and the message says where each was and why
    start = time.monotonic()
    proc, results = _ddp(tmp_path, "stop_early", timeout=90, pg_timeout=10)
    assert proc.returncode != 0 and not results, proc.stderr[-3000:]
    assert time.monotonic() - start < 75
    assert "rank(s) [0] in the gradient synchronisation in backward; rank(s) [1] in the train epoch-end" \
        in proc.stderr, proc.stderr[-3000:]
    assert "trainer.should_stop = True on some ranks only" in proc.stderr


def test_one_key_with_different_reduce_per_rank_is_an_error_naming_key_and_ranks(tmp_path):
    proc, results = _ddp(tmp_path, "reduce_conflict")
    assert proc.returncode != 0 and not results
    assert "self.log('acc', sync_dist=True) was logged with different options" in proc.stderr
    assert "reduce_fx='max', on_step=False on ranks [0]" in proc.stderr


# ---------------------------------------------------------------------- a hanging rank under torchrun
HANG = r'''
import os, signal, sys, time
from datetime import timedelta
import torch
from torch.utils.data import DataLoader, TensorDataset
import surge
from surge.strategies.ddp import DDP

out = sys.argv[1]
restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))


class Net(surge.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        if restart == 0 and self.trainer.global_rank == 1 and self.trainer.global_step == 5:
            # surge's preemption handler only notes a SIGTERM for the next step boundary, which a stuck
            # rank never reaches (torchrun then waits 30 s before its SIGKILL): let it end this one at once
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(600)  # alive but stuck (a deadlock, a dead file system): no error, no exit
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


g = torch.Generator().manual_seed(1)
x = torch.randn(64, 8, generator=g)
ckpt = surge.callbacks.ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), every_n_train_steps=2, save_last=True)
trainer = surge.Trainer(accelerator="cpu", devices=2, strategy=DDP(timeout=timedelta(seconds=10)), max_epochs=1,
                        callbacks=[ckpt], logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=out)
trainer.fit(Net(), DataLoader(TensorDataset(x, x[:, :1]), batch_size=4), ckpt_path="last")
if trainer.is_global_zero:
    torch.save({"step": trainer.global_step, "restart": restart, "resumed_from": trainer.ckpt_path},
               os.path.join(out, "final.pt"))
'''


def test_a_hanging_rank_is_named_and_torchrun_restarts_and_resumes_the_job(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "3", "--monitor-interval", "0.5", str(script), str(tmp_path)]
    proc = _run(cmd, tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # the first attempt: rank 0 waits in DDP's gradient all-reduce of step 5 for rank 1, which sleeps;
    # after DDP(timeout=10 s) it names the operation and the rank that never answered, and exits
    assert "rank 0 of 2: the gradient synchronisation in backward failed: it did not complete within the " \
           "process-group timeout (10 s" in proc.stderr, proc.stderr[-4000:]
    assert "Rank(s) [1] did not answer" in proc.stderr
    # torchrun stopped the stuck rank and started both again; they resumed from last.ckpt (step 4) at the
    # first restart (each attempt rendezvouses under its own store prefix: no address of the dead attempt
    # is read back, which failed or hung restarted pairs before)
    final = torch.load(tmp_path / "final.pt")
    assert final["step"] == 8 and final["restart"] == 1 and final["resumed_from"].endswith("last.ckpt")


# ---------------------------------------------------------------------- soak: SIGKILLs under torchrun
SOAK = r'''
import os, signal, sys
import torch
from torch.utils.data import DataLoader, TensorDataset
import surge

out, kills = sys.argv[1], [int(k) for k in sys.argv[2].split(",") if k]
restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
surge.seed_everything(0)


class Net(surge.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        # the k-th start of rank 1 is killed (SIGKILL, no cleanup) at step kills[k]
        if self.trainer.global_rank == 1 and restart < len(kills) and self.trainer.global_step == kills[restart]:
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


g = torch.Generator().manual_seed(1)
x = torch.randn(400, 8, generator=g)
data = DataLoader(TensorDataset(x, x[:, :1] - x[:, 1:2]), batch_size=4, shuffle=True)
ckpt = surge.callbacks.ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), every_n_train_steps=20, save_top_k=1,
                                       save_last=True)
# A short process-group timeout: a restarted worker that hangs while connecting (seen now and then with
# gloo on torch 2.13) fails within seconds and torchrun starts another attempt.
from datetime import timedelta
from surge.strategies.ddp import DDP
trainer = surge.Trainer(accelerator="cpu", devices=2, strategy=DDP(timeout=timedelta(seconds=15)), max_epochs=6, callbacks=[ckpt], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out)
trainer.fit(Net(), data, ckpt_path="last")
if trainer.is_global_zero:
    torch.save({k: v.clone() for k, v in trainer.module.state_dict().items()}, os.path.join(out, "final.pt"))
'''


def _soak(tmp_path, name, kills):
    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "soak.py"
    script.write_text(SOAK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "10", "--monitor-interval", "0.5", str(script), str(out), ",".join(map(str, kills))]
    proc = _run(cmd, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out / "final.pt"), proc



def test_soak_random_sigkills_under_torchrun_end_with_the_uninterrupted_weights(tmp_path):
    rng = random.Random(os.environ.get("SURGE_SOAK_SEED", 0))
    # 300 steps (6 epochs of 50); three kills at random steps, later each time, off the checkpoint steps
    kills = sorted(rng.sample([s for s in range(5, 295) if s % 20], 3))
    reference, _ = _soak(tmp_path, "uninterrupted", [])
    resumed, proc = _soak(tmp_path, "killed", kills)
    assert proc.stderr.count("SIGKILL") >= 1 or "Signals.SIGKILL" in proc.stderr or "exitcode: -9" in proc.stderr
    assert reference.keys() == resumed.keys()
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k


def test_only_torch_distributed_failures_are_explained():
    from datetime import timedelta

    from surge.strategies.collectives import CollectiveError, explain, is_collective_failure

    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting "
                        "5000ms for recv operation to complete")
    assert is_collective_failure(gloo)
    assert is_collective_failure(torch.distributed.DistBackendError("NCCL watchdog: collective timed out"))
    assert not is_collective_failure(RuntimeError("my own code timed out"))  # user errors pass through
    err = explain(gloo, "the barrier 'x'", 0, 2, timedelta(seconds=5))
    assert not is_collective_failure(err)  # an outer guard leaves an explained error alone
    assert isinstance(err, CollectiveError) and isinstance(err, RuntimeError)
    # no process group here, so no rendezvous store to ask: said so, without waiting
    assert str(err).startswith("rank 0 of 2: the barrier 'x' failed: it did not complete within the "
                               "process-group timeout (5 s")
    assert "could not ask the other ranks" in str(err)


def test_the_per_step_guard_names_like_the_context_guard_and_always_unwinds():
    """``_guarded`` (the training step and backward, every step) names a failing collective as ``with
    _guard(...)`` does: a caller's name wins over the strategy's generic one, never over another caller's;
    the name stack is left as it was, whether ``fn`` returns or raises; user errors pass through unchanged."""
    from datetime import timedelta

    from surge.strategies.collectives import CollectiveError, NamedCollectives

    class Strategy(NamedCollectives):
        global_rank, world_size, timeout = 0, 2, timedelta(seconds=5)

        def __init__(self):
            self._op_names = []

    s = Strategy()
    seen = []
    assert s._guarded(("generic", False), lambda x, k=None: seen.append(list(s._op_names)) or x * 2, 21, k=1) == 42
    assert seen == [[("generic", False)]] and s._op_names == []
    with s.collective("the caller's name"):
        s._guarded(("generic", False), lambda: seen.append(s._op_names[-1]))
        s._guarded(("my own name", True), lambda: seen.append(s._op_names[-1]))
    assert seen[1:] == [("the caller's name", True), ("my own name", True)] and s._op_names == []

    def fails(err):
        raise err

    mine = ValueError("user code")
    with pytest.raises(ValueError) as raised:
        s._guarded(("generic", False), fails, mine)
    assert raised.value is mine and s._op_names == []
    gloo = RuntimeError("[gloo/transport/tcp/pair.cc:598] Connection closed by peer [127.0.0.1]:1234")
    with s.collective("the caller's name"), pytest.raises(CollectiveError) as raised:
        s._guarded(("generic", False), fails, gloo)
    assert str(raised.value).startswith("rank 0 of 2: the caller's name failed: it lost its connection")
    assert raised.value.__cause__ is gloo and s._op_names == []


@pytest.mark.parametrize("other_keys", [["acc"], ["acc", "only_on_the_other_rank"]])
def test_epoch_end_gathers_the_key_lists_only_when_the_ranks_differ(other_keys):
    # Every rank sends a digest of its sync_dist key list in one small all_gather; the lists themselves are
    # gathered (all_gather_object, pickled) only when the digests differ. Here a stand-in strategy plays this
    # rank and the other one: its all_gather adds what the other rank would send.
    import contextlib

    from surge.results import Results, _same_on_every_rank

    def log_each(results, keys):
        results.hook = "training_step"
        for key in keys:
            results.log(key, torch.tensor(1.0), prog_bar=False, logger=True, on_step=False, on_epoch=True,
                        reduce_fx="mean", enable_graph=False, sync_dist=True, add_dataloader_idx=True, batch_size=4,
                        rank_zero_only=False)

    class Capture:  # the other rank's side of the digest all_gather: what it would send
        def all_gather(self, tensor):
            self.sent = tensor
            return tensor.unsqueeze(0)

    other = Results("train", None)
    log_each(other, other_keys)
    theirs = sorted((m.name, m.reduce, m.on_step, m.prog_bar, m.logger) for m in other.metrics.values())
    capture = Capture()
    _same_on_every_rank(capture, theirs, torch.device("cpu"))

    class TwoRanks:
        world_size = 2
        gathered = 0

        def collective(self, what):
            return contextlib.nullcontext()

        def all_gather(self, tensor):
            return torch.stack([tensor, capture.sent])

        def reduce(self, tensor, op):
            return tensor * 2 if op == "sum" else tensor  # the other rank logged the same values

        def all_gather_object(self, obj):
            self.gathered += 1
            return [obj, theirs]

    strategy = TwoRanks()
    results = Results("train", strategy)
    log_each(results, ["acc"])
    values = results.epoch_metrics()
    assert strategy.gathered == (0 if other_keys == ["acc"] else 1)
    assert sorted(values) == sorted(other_keys) and float(values["acc"][0]) == 1.0
