"""Runs that keep their data: whatever stops fit, its final state is checkpointed; a SIGKILL loses none of
the CSV history that a checkpoint covers; a resume continues both the training and the history exactly."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import surge
from surge.callbacks import ModelCheckpoint
from surge.demos.toy import ToyModel, ToyDataset
from surge.loggers import CSVLogger


def quiet(root, **kwargs):
    kwargs.setdefault("logger", False)
    return surge.Trainer(accelerator="cpu", default_root_dir=str(root), enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, **kwargs)


class Dropped(ToyModel):
    """ToyModel with dropout and shuffled batches (8 a epoch): its steps draw random numbers, so a resume
    matches only if the checkpoint holds the exact data position and random state of the next step."""

    def __init__(self):
        super().__init__()
        self.losses = {}  # the global step each optimizer step makes -> its loss

    def training_step(self, batch, batch_idx):
        out = F.dropout(self(batch), 0.3)
        loss = F.mse_loss(out, torch.ones_like(out))
        self.log("train_loss", loss)
        self.losses[self.global_step + 1] = loss.item()
        return loss

    def train_dataloader(self):
        return DataLoader(ToyDataset(32, 64, seed=1), batch_size=8, shuffle=True)


def fitted(root, model=None, ckpt_path=None, **kwargs):
    torch.manual_seed(0)
    model = model or Dropped()
    trainer = quiet(root, **kwargs)
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, model


def ckpt_files(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".ckpt"))


def step_of(path):
    return torch.load(path, weights_only=True)["global_step"]


# ---------------------------------------------------------------------- the final state is saved
def test_max_steps_inside_an_epoch_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    _, full = fitted(tmp_path / "full", max_steps=12)
    trainer, _ = fitted(tmp_path / "run", max_steps=5)  # 8 batches an epoch: fit stops inside epoch 0
    cb = trainer.checkpoint_callback
    assert cb.best_model_path == str(tmp_path / "run" / "checkpoints" / "epoch=0-step=5.ckpt")
    assert ckpt_files(cb.dirpath) == ["epoch=0-step=5.ckpt", "last.ckpt"]
    assert step_of(cb.best_model_path) == step_of(cb.last_model_path) == 5
    torch.manual_seed(123)  # the resume owes nothing to the state of this process
    _, resumed = fitted(tmp_path / "run", model=Dropped(), ckpt_path=cb.best_model_path, max_steps=12)
    assert resumed.losses == {s: v for s, v in full.losses.items() if s > 5}  # bit for bit, across the epoch end
    for a, b in zip(resumed.parameters(), full.parameters()):
        assert torch.equal(a, b)


def test_an_epoch_end_checkpoint_written_after_validation_resumes_exactly(tmp_path):
    # With validation each epoch, ModelCheckpoint saves in on_validation_end, while validation still holds
    # the random streams (its loader alone draws a seed); training then goes on with the streams as they
    # were before validation, and so must the checkpoint.
    _, full = fitted(tmp_path / "full", max_epochs=2)
    trainer, _ = fitted(tmp_path / "run", max_epochs=1)
    assert os.path.basename(trainer.checkpoint_callback.best_model_path) == "epoch=0-step=8.ckpt"
    torch.manual_seed(123)
    _, resumed = fitted(tmp_path / "run", model=Dropped(), ckpt_path=trainer.checkpoint_callback.best_model_path,
                        max_epochs=2)
    assert resumed.losses == {s: v for s, v in full.losses.items() if s > 8}


class StopAt(surge.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_should_stop_inside_an_epoch_saves_ranked_by_the_monitor(tmp_path):
    cb = ModelCheckpoint(monitor="train_loss", save_top_k=2)
    trainer, model = fitted(tmp_path, callbacks=[cb, StopAt(3)], max_epochs=5)
    assert trainer.global_step == 3
    path = os.path.join(cb.dirpath, "epoch=0-step=3.ckpt")
    assert cb.best_k_models == pytest.approx({path: model.losses[3]})
    assert cb.best_model_path == path and step_of(path) == 3


def test_a_monitor_not_logged_yet_saves_only_last(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_last=True)
    with pytest.warns(UserWarning, match="monitor='val_loss'.*found no such metric"):
        fitted(tmp_path, callbacks=[cb], max_steps=3)  # before the first validation
    assert ckpt_files(cb.dirpath) == ["last.ckpt"] and cb.best_model_path == ""
    assert step_of(cb.last_model_path) == 3


def test_a_step_schedule_adds_no_top_k_file_off_its_steps_but_refreshes_last(tmp_path):
    cb = ModelCheckpoint(every_n_train_steps=3, save_top_k=-1)
    fitted(tmp_path / "a", callbacks=[cb], max_steps=5)
    assert ckpt_files(cb.dirpath) == ["epoch=0-step=3.ckpt"]  # as Lightning: step 5 is not on the schedule
    cb = ModelCheckpoint(every_n_train_steps=3, save_top_k=-1, save_last=True)
    fitted(tmp_path / "b", callbacks=[cb], max_steps=5)
    assert ckpt_files(cb.dirpath) == ["epoch=0-step=3.ckpt", "last.ckpt"] and step_of(cb.last_model_path) == 5


def test_an_epoch_end_that_every_n_epochs_skips_refreshes_last(tmp_path):
    cb = ModelCheckpoint(every_n_epochs=2, save_top_k=-1, save_last=True)
    fitted(tmp_path, callbacks=[cb], max_epochs=3)
    assert ckpt_files(cb.dirpath) == ["epoch=1-step=16.ckpt", "last.ckpt"]  # no top-k file off the schedule
    assert step_of(cb.last_model_path) == 24  # but last.ckpt is where fit ended, not epoch 1


def test_a_resumed_run_does_not_save_its_starting_step_again(tmp_path):
    # Checkpoints every 2 optimizer steps of 2 micro-batches. The resumed run's first micro-batch is still
    # at global step 2: saving there again overwrote the step-2 file with a state missing that batch's
    # gradients (its data position one batch further on).
    cb = ModelCheckpoint(every_n_train_steps=2, save_top_k=-1)
    fitted(tmp_path, callbacks=[cb], max_steps=2, accumulate_grad_batches=2)
    path = os.path.join(cb.dirpath, "epoch=0-step=2.ckpt")
    before = torch.load(path, weights_only=True)["trainer_state"]
    cb2 = ModelCheckpoint(every_n_train_steps=2, save_top_k=-1)
    fitted(tmp_path, callbacks=[cb2], max_steps=4, accumulate_grad_batches=2, ckpt_path=path)
    assert torch.load(path, weights_only=True)["trainer_state"] == before
    # A resume that has nothing left to do writes nothing.
    mtimes = {f: os.stat(os.path.join(cb.dirpath, f)).st_mtime_ns for f in ckpt_files(cb.dirpath)}
    assert sorted(mtimes) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]
    cb3 = ModelCheckpoint(every_n_train_steps=2, save_top_k=-1, save_last=True)
    fitted(tmp_path, callbacks=[cb3], max_steps=4, accumulate_grad_batches=2,
           ckpt_path=os.path.join(cb.dirpath, "epoch=0-step=4.ckpt"))
    assert {f: os.stat(os.path.join(cb.dirpath, f)).st_mtime_ns for f in ckpt_files(cb.dirpath)} == mtimes


def test_the_gpt_demo_stopped_by_max_steps_has_a_checkpoint(tmp_path):
    from surge.demos.gpt import GPTConfig, GPTModule, stdlib_text_loader

    trainer = quiet(tmp_path, max_steps=2)
    loader = stdlib_text_loader(16, batch_size=4, limit=64)  # 16 batches an epoch
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*num_workers.*")
        trainer.fit(GPTModule(GPTConfig.tiny(n_layer=1)), loader)
    cb = trainer.checkpoint_callback
    assert os.path.basename(cb.best_model_path) == "epoch=0-step=2.ckpt" and step_of(cb.last_model_path) == 2


# ---------------------------------------------------------------------- the CSV history survives a kill
KILLED_AT, CHECKPOINT_EVERY, STEPS = 13, 5, 20


class KillAt(surge.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)  # no exit handler, no flush: what is on disk is all there is


def csv_run(root, accumulate, flush_every, ckpt_path=None, kill_at=None):
    """Dropped with a CSVLogger writing every batch (buffered ``flush_every`` rows at a time) and a
    checkpoint every 5 optimizer steps."""
    callbacks = [ModelCheckpoint(every_n_train_steps=CHECKPOINT_EVERY, save_last=True)]
    callbacks += [KillAt(kill_at)] if kill_at else []
    fitted(root, logger=CSVLogger(str(root), flush_logs_every_n_steps=flush_every), log_every_n_steps=1,
           max_steps=STEPS, accumulate_grad_batches=accumulate, callbacks=callbacks, ckpt_path=ckpt_path)


def rows(root):
    """metrics.csv's rows, each without its empty cells (a file written before a key appeared is narrower)."""
    with open(os.path.join(root, "surge_logs", "version_0", "metrics.csv"), newline="") as f:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


@pytest.mark.parametrize("accumulate, flush_every", [
    (1, 4),  # the killed run wrote rows past its checkpoint (steps 11, 12): the resume replaces them
    # rows of the micro-batches after a checkpoint's optimizer step carry that step too: the resume keeps
    # those written before the checkpoint's step ended and adds the rest once
    (2, 100),
])
def test_a_killed_run_keeps_its_csv_rows_and_the_resume_appends_each_step_once(tmp_path, accumulate, flush_every):
    here = os.path.abspath(__file__)
    script = (f"import importlib.util, sys\n"
              f"spec = importlib.util.spec_from_file_location('data_loss', {here!r})\n"
              f"mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
              f"mod.csv_run(sys.argv[1], {accumulate}, {flush_every}, kill_at={KILLED_AT})\n")
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "run" / "surge_logs" / "version_0" / "checkpoints" / "last.ckpt"
    saved = step_of(last)
    assert saved == KILLED_AT // CHECKPOINT_EVERY * CHECKPOINT_EVERY
    csv_run(tmp_path / "full", accumulate, flush_every)
    reference = rows(tmp_path / "full")
    # Every row up to the checkpoint's optimizer step (its own row included) survived the kill, as the
    # uninterrupted run wrote it.
    on_disk = rows(tmp_path / "run")
    assert on_disk == reference[:len(on_disk)]
    assert len(on_disk) >= sum(int(r["step"]) < saved for r in reference) + 1
    csv_run(tmp_path / "run", accumulate, flush_every, ckpt_path=str(last))
    resumed = rows(tmp_path / "run")
    assert resumed == reference  # the same rows, in the same order, with the same values: no step twice
    train_steps = [int(r["step"]) for r in resumed if "train_loss" in r]
    assert train_steps == sorted(train_steps) and set(train_steps) == set(range(accumulate == 1, STEPS + 1))


class SignalAt(surge.Callback):
    def __init__(self, step, signum):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            if self.signum is None:
                raise RuntimeError("the step failed")
            os.kill(os.getpid(), self.signum)


def logged_steps(root):
    path = os.path.join(root, "surge_logs", "version_0", "metrics.csv")
    return [int(r["step"]) for r in rows(root) if "train_loss" in r] if os.path.exists(path) else []


def test_a_preemption_writes_the_history_before_its_checkpoint(tmp_path):
    trainer = quiet(tmp_path, logger=CSVLogger(str(tmp_path)), log_every_n_steps=1, max_steps=20,
                    preemption_signals=["SIGUSR1"], callbacks=[SignalAt(7, signal.SIGUSR1)])
    save, seen = trainer.strategy.save_checkpoint, []

    def watched(checkpoint, path):
        seen.append((os.path.basename(path), logged_steps(tmp_path)))  # what a SIGKILL now would leave
        return save(checkpoint, path)

    trainer.strategy.save_checkpoint = watched
    with pytest.raises(SystemExit):
        trainer.fit(Dropped())
    assert seen == [("last.ckpt", list(range(1, 8)))]


def test_a_failed_run_writes_its_history(tmp_path):
    trainer = quiet(tmp_path, logger=CSVLogger(str(tmp_path)), log_every_n_steps=1, max_steps=20,
                    enable_checkpointing=False, callbacks=[SignalAt(7, None)])
    with pytest.raises(RuntimeError, match="the step failed"):
        trainer.fit(Dropped())
    assert logged_steps(tmp_path) == list(range(1, 7))  # step 7 failed in on_train_batch_end, before its row


FSDP_SCRIPT = r'''
import json, os, sys
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import surge
from surge.strategies.fsdp import FSDP

root = sys.argv[1]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


class Net(surge.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks, self.head, self.losses = nn.Sequential(Block(), Block()), nn.Linear(8, 1), {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.head(self.blocks(x)), y)
        self.losses[self.global_step + 1] = loss.item()
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))


def fit(name, steps, ckpt_path=None):  # 8 batches of 4 per rank an epoch; the default ModelCheckpoint
    trainer = surge.Trainer(strategy=FSDP(auto_wrap={Block}), devices=2, accelerator="cpu", max_steps=steps,
                            logger=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=os.path.join(root, name))
    model = Net()
    trainer.fit(model, DataLoader(TensorDataset(x, x[:, :1]), batch_size=4), ckpt_path=ckpt_path)
    return trainer, model


_, full = fit("full", 6)
stopped, _ = fit("run", 3)
best = stopped.checkpoint_callback.best_model_path
resumed = fit("run", 6, best)[1] if best else None
if stopped.is_global_zero:
    with open(os.path.join(root, "result.json"), "w") as f:
        json.dump({"best": best, "full": full.losses, "resumed": resumed and resumed.losses}, f)
'''


def test_fsdp_stopped_by_max_steps_saves_a_sharded_checkpoint_that_resumes_exactly(tmp_path):
    # One launch (surge starts the second rank): the uninterrupted 6 steps, 3 steps, their resume to 6.
    (tmp_path / "train.py").write_text(FSDP_SCRIPT)
    from launch_env import child_env  # here: a killed run's process loads this file without tests/ on its path

    env = child_env()
    proc = subprocess.run([sys.executable, str(tmp_path / "train.py"), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["best"] == str(tmp_path / "run" / "checkpoints" / "epoch=0-step=3.ckpt")
    assert result["resumed"] == {s: v for s, v in result["full"].items() if int(s) > 3}
