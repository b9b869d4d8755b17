"""Timer: what it measures, when it stops fit, and that its training time survives a resume.

The Timer's clock is replaced by a counter that the module advances by one second per training batch (and
per validation / test batch), so every expected time below is a whole number of batches.
"""
from __future__ import annotations

import importlib
from datetime import timedelta

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.callbacks import Timer
from surge.utils import MisconfigurationError

timer_module = importlib.import_module("surge.callbacks.timer")


class Clock:
    def __init__(self):
        self.now = 100.0  # any start: the Timer only subtracts

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(timer_module, "_now", c)
    return c


def data(n=16):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)  # 4 batches


class Ticking(surge.Module):
    """Each training batch takes one second on ``clock``; so does each validation and test batch."""

    def __init__(self, clock):
        super().__init__()
        self.clock = clock
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        self.clock.now += 1
        x, y = batch
        return F.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        self.clock.now += 1

    def test_step(self, batch, batch_idx):
        self.clock.now += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def trainer(tmp_path, timer, **kw):
    kw.setdefault("max_epochs", 100)
    return surge.Trainer(default_root_dir=str(tmp_path), callbacks=[timer], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw)


@pytest.mark.parametrize("duration, seconds", [
    ("00:00:01:30", 90), ("01:02:03:04", 93784), (" 00:12:00:00 ", 43200),
    (timedelta(minutes=2), 120), ({"hours": 1, "minutes": 1}, 3660), (None, None)])
def test_duration_formats(duration, seconds):
    timer = Timer(duration=duration)
    assert timer._duration == seconds
    assert timer.time_remaining() == seconds  # nothing has run yet
    assert timer.time_elapsed() == 0


@pytest.mark.parametrize("bad", ["1:30", "00:00:1:30", "1 hour", {"fortnights": 1}, 90])
def test_invalid_duration_is_an_error(bad):
    with pytest.raises(MisconfigurationError, match="Timer"):
        Timer(duration=bad)


def test_invalid_interval_is_an_error():
    with pytest.raises(MisconfigurationError, match="Possible choices are: step, epoch"):
        Timer(duration="00:00:00:10", interval="batch")


def test_stops_fit_after_the_batch_that_spends_the_duration(tmp_path, clock, capsys):
    timer = Timer(duration={"seconds": 6})
    t = trainer(tmp_path, timer)
    t.fit(Ticking(clock), data())
    # 1 s per batch: the 6th batch (epoch 1, batch 1) spends the budget and fit ends right after it; the epoch
    # it ended inside counts in current_epoch, as in Lightning
    assert t.global_step == 6
    assert t.current_epoch == 2
    assert timer.time_elapsed("train") == 6
    assert timer.time_remaining("train") == 0
    assert timer.end_time("train") - timer.start_time("train") == 6
    assert "Time limit reached. Elapsed time is 0:00:06" in capsys.readouterr().out


def test_epoch_interval_stops_only_at_an_epoch_end(tmp_path, clock):
    timer = Timer(duration={"seconds": 6}, interval="epoch")
    t = trainer(tmp_path, timer)
    t.fit(Ticking(clock), data())
    # spent during epoch 1; the check after that epoch (8 batches) stops the run
    assert t.global_step == 8
    assert t.current_epoch == 2
    assert timer.time_elapsed() == 8


def test_without_duration_it_only_measures(tmp_path, clock):
    timer = Timer(verbose=False)
    t = trainer(tmp_path, timer, max_epochs=2)
    model = Ticking(clock)
    t.fit(model, data(), data(8))  # 2 epochs x (4 train + 2 val batches)
    assert t.global_step == 8 and timer.time_remaining() is None
    # validation ran twice; the times are those of the last run, as a start resets the end
    assert timer.time_elapsed("validate") == 2
    assert timer.time_elapsed("train") == 12  # the validations happen inside training
    t.test(model, data(12), verbose=False)
    assert timer.time_elapsed("test") == 3
    assert timer.start_time("predict") is None and timer.time_elapsed("predict") == 0


def test_elapsed_grows_while_a_stage_runs(tmp_path, clock):
    seen = []

    class Peek(surge.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(timer.time_elapsed())

    timer = Timer()
    t = surge.Trainer(max_epochs=1, callbacks=[timer, Peek()], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    t.fit(Ticking(clock), data())
    assert seen == [1, 2, 3, 4]


def test_state_dict_holds_each_stage(tmp_path, clock):
    timer = Timer()
    t = trainer(tmp_path, timer, max_epochs=1)
    t.fit(Ticking(clock), data(), data(8))
    state = timer.state_dict()["time_elapsed"]
    assert state["train"] == 6 and state["validate"] == 2 and state["test"] == 0


def test_training_time_continues_after_a_resume(tmp_path, clock):
    first = Timer(duration={"seconds": 10})
    t = trainer(tmp_path, first, max_steps=4)
    t.fit(Ticking(clock), data())
    assert t.global_step == 4 and first.time_elapsed() == 4
    path = str(tmp_path / "four.ckpt")
    t.save_checkpoint(path)
    assert torch.load(path, weights_only=False)["callbacks"]["Timer"]["time_elapsed"]["train"] == 4

    clock.now += 1000  # time between the runs does not count
    second = Timer(duration={"seconds": 10})
    t2 = trainer(tmp_path, second)
    t2.fit(Ticking(clock), data(), ckpt_path=path)
    # 4 s before the resume + 6 s after it: the 10 s budget covers both runs
    assert t2.global_step == 10
    assert second.time_elapsed() == 10


def test_a_resume_with_the_budget_spent_trains_no_further(tmp_path, clock):
    t = trainer(tmp_path, Timer(), max_steps=4)
    t.fit(Ticking(clock), data())
    path = str(tmp_path / "four.ckpt")
    t.save_checkpoint(path)

    spent = Timer(duration={"seconds": 3})
    t2 = trainer(tmp_path, spent)
    model = Ticking(clock)
    t2.fit(model, data(), ckpt_path=path)
    assert t2.global_step == 4  # stopped at fit's start, before any batch
    assert spent.time_elapsed() == 4


def test_lightning_module_path():
    from surge.lightning.callbacks import Timer as FromPackage
    from surge.lightning.callbacks.timer import Interval, Timer as FromModule

    assert FromPackage is FromModule is Timer
    assert Timer(interval=Interval.epoch)._interval == "epoch"
