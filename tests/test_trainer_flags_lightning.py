"""Trainer arguments as code written for Lightning uses them: barebones, PL_TRAINER_* defaults, the
1-versus-1.0 notes, val_check_interval limits, fast_dev_run with the user's callbacks, max_epochs left
unset, and validation data without validation_step (and the reverse). Checked by what really ran."""
import logging
import os
import warnings
from datetime import timedelta

import pytest
import torch
from torch.utils.data import DataLoader

import surge
import surge.lightning as pl
from surge.callbacks import EarlyStopping, ModelCheckpoint, ModelSummary, ProgressBar
from surge.demos.toy import ToyModel, ToyDataset
from surge.utils import MisconfigurationError


def quiet(**kwargs):
    """A Trainer that writes nothing and prints nothing (each test turns on what it checks)."""
    for key, value in dict(enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                           logger=False, accelerator="cpu").items():
        kwargs.setdefault(key, value)
    return surge.Trainer(**kwargs)


class Counting(ToyModel):
    """ToyModel counting the training and (non-sanity) validation batches it ran."""

    def __init__(self):
        super().__init__()
        self.trained, self.validated = 0, 0

    def training_step(self, batch, batch_idx):
        self.trained += 1
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        if not self.trainer.sanity_checking:
            self.validated += 1
        return super().validation_step(batch, batch_idx)


@pytest.fixture
def surge_logs(caplog):
    """Records what surge logs at INFO (logger "surge") and returns the text so far."""
    caplog.set_level(logging.INFO, logger="surge")
    return lambda: "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("surge"))


# ---------------------------------------------------------------- barebones
def test_barebones_turns_every_overhead_off(tmp_path, surge_logs):
    trainer = surge.Trainer(barebones=True, default_root_dir=tmp_path, accelerator="cpu")
    assert trainer.barebones
    assert trainer.loggers == [] and trainer.logger is None
    assert trainer.checkpoint_callback is None and trainer.progress_bar_callback is None
    assert not any(isinstance(cb, (ModelSummary, ProgressBar, ModelCheckpoint)) for cb in trainer.callbacks)
    assert trainer.log_every_n_steps == 0 and trainer.num_sanity_val_steps == 0
    assert not trainer.fast_dev_run and not trainer.detect_anomaly and trainer.profiler is None
    assert "running in `Trainer(barebones=True)` mode" in surge_logs()
    assert not surge.Trainer(accelerator="cpu", logger=False).barebones


@pytest.mark.parametrize("name, value", [
    ("enable_checkpointing", True), ("logger", True), ("enable_progress_bar", True), ("enable_model_summary", True),
    ("log_every_n_steps", 1), ("num_sanity_val_steps", 2), ("fast_dev_run", 1), ("fast_dev_run", True),
    ("detect_anomaly", True), ("profiler", "simple"),
])
def test_barebones_refuses_what_it_turns_off(tmp_path, name, value):
    with pytest.raises(MisconfigurationError, match=rf"`Trainer\(barebones=True, {name}={value!r}\)` was passed"):
        surge.Trainer(barebones=True, default_root_dir=tmp_path, **{name: value})
    # the same refusal is a ValueError, which is what Lightning raises
    with pytest.raises(ValueError):
        surge.Trainer(barebones=True, default_root_dir=tmp_path, **{name: value})


def test_barebones_accepts_the_values_it_would_choose(tmp_path):
    trainer = surge.Trainer(barebones=True, default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=0,
                            num_sanity_val_steps=0, fast_dev_run=False, detect_anomaly=False, profiler=None)
    assert trainer.loggers == [] and trainer.log_every_n_steps == 0


def test_barebones_trains_and_writes_nothing(tmp_path):
    model = Counting()
    trainer = surge.Trainer(barebones=True, max_epochs=2, limit_train_batches=3, limit_val_batches=2,
                            default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(model)
    assert trainer.global_step == 6 and model.trained == 6
    assert model.validated == 4  # validation still runs, only its extras are off
    assert list(tmp_path.iterdir()) == []


def test_without_barebones_the_switches_keep_their_defaults(tmp_path):
    trainer = surge.Trainer(default_root_dir=tmp_path, accelerator="cpu")
    assert trainer.log_every_n_steps == 50 and trainer.num_sanity_val_steps == 2
    assert len(trainer.loggers) == 1 and trainer.checkpoint_callback is not None
    assert trainer.progress_bar_callback is not None
    assert any(isinstance(cb, ModelSummary) for cb in trainer.callbacks)


# ---------------------------------------------------------------- PL_TRAINER_* / SURGE_TRAINER_*
def test_environment_gives_defaults_parsed_as_literals(tmp_path, monkeypatch):
    monkeypatch.setenv("PL_TRAINER_MAX_EPOCHS", "3")
    monkeypatch.setenv("PL_TRAINER_LOGGER", "False")
    monkeypatch.setenv("PL_TRAINER_ACCELERATOR", "cpu")  # not a literal: stays a string
    monkeypatch.setenv("PL_TRAINER_LIMIT_VAL_BATCHES", "0.5")
    monkeypatch.setenv("PL_TRAINER_CHECK_VAL_EVERY_N_EPOCH", "None")
    monkeypatch.setenv("PL_TRAINER_VAL_CHECK_INTERVAL", "4")
    trainer = surge.Trainer(default_root_dir=tmp_path)
    assert trainer.max_epochs == 3 and trainer.loggers == []
    assert trainer.limit_val_batches == 0.5 and isinstance(trainer.limit_val_batches, float)
    assert trainer.check_val_every_n_epoch is None and trainer.val_check_interval == 4
    assert trainer.strategy.root_device.type == "cpu"


def test_environment_default_is_used_by_fit(tmp_path, monkeypatch):
    monkeypatch.setenv("PL_TRAINER_MAX_EPOCHS", "2")
    monkeypatch.setenv("PL_TRAINER_LIMIT_TRAIN_BATCHES", "3")
    model = Counting()
    trainer = quiet(default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(model)
    assert trainer.current_epoch == 2 and model.trained == 6


def test_explicit_arguments_win_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PL_TRAINER_LOGGER", "True")
    monkeypatch.setenv("PL_TRAINER_MAX_STEPS", "7")
    trainer = quiet(default_root_dir=tmp_path, max_steps=42)
    assert trainer.loggers == [] and trainer.max_steps == 42


def test_surge_spelling_wins_over_lightning_spelling(tmp_path, monkeypatch, surge_logs):
    monkeypatch.setenv("PL_TRAINER_MAX_STEPS", "7")
    monkeypatch.setenv("SURGE_TRAINER_MAX_STEPS", "9")
    assert quiet(default_root_dir=tmp_path).max_steps == 9
    assert "max_steps=9 (SURGE_TRAINER_MAX_STEPS)" in surge_logs()  # where a default came from is on record


def test_environment_defaults_apply_through_surge_lightning(tmp_path, monkeypatch):
    monkeypatch.setenv("PL_TRAINER_MAX_EPOCHS", "5")
    assert pl.Trainer(default_root_dir=tmp_path, logger=False).max_epochs == 5


def test_unknown_environment_names(tmp_path, monkeypatch):
    monkeypatch.setenv("PL_TRAINER_NOT_AN_ARGUMENT", "1")  # Lightning's spelling: ignored, as Lightning does
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet(default_root_dir=tmp_path)
    monkeypatch.setenv("SURGE_TRAINER_MAX_EPOCH", "3")  # surge's own spelling: a typo is reported
    with pytest.warns(UserWarning, match=r"SURGE_TRAINER_MAX_EPOCH name no Trainer argument"):
        assert quiet(default_root_dir=tmp_path).max_epochs is None


def test_a_bad_environment_value_names_the_argument(tmp_path, monkeypatch):
    monkeypatch.setenv("PL_TRAINER_MAX_EPOCHS", "many")
    with pytest.raises(MisconfigurationError, match=r"max_epochs must be an int >= -1 or None, got 'many'"):
        surge.Trainer(default_root_dir=tmp_path)


# ---------------------------------------------------------------- 1 versus 1.0
@pytest.mark.parametrize("name", ["limit_train_batches", "limit_val_batches", "limit_test_batches",
                                  "limit_predict_batches", "overfit_batches"])
def test_one_and_one_point_zero_say_which_they_mean(tmp_path, surge_logs, name):
    quiet(default_root_dir=tmp_path, **{name: 1})
    assert f"`Trainer({name}=1)` was configured so 1 batch" in surge_logs()
    quiet(default_root_dir=tmp_path, **{name: 1.0})
    assert f"`Trainer({name}=1.0)` was configured so 100% of the batches" in surge_logs()


def test_no_note_by_default(tmp_path, surge_logs):
    trainer = quiet(default_root_dir=tmp_path)
    assert "was configured so" not in surge_logs()
    assert trainer.limit_train_batches == 1.0 and trainer.val_check_interval == 1.0


@pytest.mark.parametrize("value, phrase", [(1, "after every training batch"), (1.0, "at the end of every training epoch")])
def test_val_check_interval_one_and_one_point_zero(tmp_path, surge_logs, value, phrase):
    quiet(default_root_dir=tmp_path, val_check_interval=value)
    assert f"`Trainer(val_check_interval={value!r})` was configured so validation will run {phrase}" in surge_logs()


def test_one_is_one_batch_and_one_point_zero_is_all(tmp_path):
    for value, batches in ((1, 1), (1.0, 8), (3.0, 3)):  # 64 samples / 8 = 8 batches; a whole float counts
        model = Counting()
        trainer = quiet(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=value, limit_val_batches=0)
        trainer.fit(model)
        assert model.trained == batches and trainer.num_training_batches == batches


# ---------------------------------------------------------------- val_check_interval
def test_a_fraction_of_an_epoch_needs_epochs(tmp_path):
    with pytest.raises(MisconfigurationError, match=r"`val_check_interval` should be an integer .* when "
                                                    r"`check_val_every_n_epoch=None`"):
        quiet(default_root_dir=tmp_path, val_check_interval=0.5, check_val_every_n_epoch=None)


def test_an_interval_longer_than_the_epoch_is_an_error(tmp_path):
    trainer = quiet(default_root_dir=tmp_path, limit_train_batches=4, val_check_interval=10)
    with pytest.raises(MisconfigurationError, match=r"`val_check_interval` \(10\) must be less than or equal to "
                                                    r"the number of the training batches \(4\)"):
        trainer.fit(Counting())


def test_an_interval_longer_than_the_epoch_counts_across_epochs(tmp_path):
    model = Counting()
    trainer = quiet(default_root_dir=tmp_path, max_epochs=3, limit_train_batches=4, limit_val_batches=1,
                    val_check_interval=6, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    trainer.fit(model)
    assert model.validated == 2  # after training batches 6 and 12


class _Clock:
    """A stand-in for the fit loop's ``time`` module: each training batch takes one second."""

    def __init__(self):
        self.now = 100.0

    def monotonic(self):
        return self.now


class _Timed(Counting):
    """Each training batch advances ``clock`` by one second; each validation in fit records (epoch, batches
    done in that epoch) in ``seen``."""

    def __init__(self, clock, seen):
        super().__init__()
        self.clock, self.seen = clock, seen

    def training_step(self, batch, batch_idx):
        self.clock.now += 1.0
        return super().training_step(batch, batch_idx)

    def on_validation_start(self):
        if not self.trainer.sanity_checking:
            self.seen.append((self.trainer.current_epoch, self.trainer.state.batch_idx))


@pytest.mark.parametrize("interval", ["00:00:00:03", {"seconds": 3}, timedelta(seconds=2.5)])
def test_a_duration_validates_by_the_clock_at_batch_ends(tmp_path, monkeypatch, interval):
    clock = _Clock()
    for module in ("surge.fit_loop", "surge.fit_validation"):  # training starts the clock; validation reads it
        monkeypatch.setattr(f"{module}.time", clock)
    seen = []

    model = _Timed(clock, seen)
    trainer = quiet(default_root_dir=tmp_path, max_epochs=2, limit_train_batches=5, limit_val_batches=1,
                    val_check_interval=interval, num_sanity_val_steps=0)
    trainer.fit(model)
    # 3 s (or 2.5) after training starts: after batches 3 and 6 (the second epoch's first), then 9 (its fourth);
    # the clock alone decides: no extra validation at an epoch's end.
    assert seen == [(0, 3), (1, 1), (1, 4)] and model.validated == 3  # (epoch, batches done in it)
    assert trainer.val_check_interval == interval


def test_a_duration_with_check_val_every_n_epoch_validates_only_in_those_epochs(tmp_path, monkeypatch):
    clock = _Clock()
    for module in ("surge.fit_loop", "surge.fit_validation"):  # training starts the clock; validation reads it
        monkeypatch.setattr(f"{module}.time", clock)
    epochs = []

    trainer = quiet(default_root_dir=tmp_path, max_epochs=4, limit_train_batches=4, limit_val_batches=1,
                    val_check_interval="00:00:00:02", check_val_every_n_epoch=2, num_sanity_val_steps=0)
    trainer.fit(_Timed(clock, epochs))
    epochs = [epoch for epoch, _ in epochs]
    # epochs 1 and 3 only; in each, the time since the last validation is past 2 s at their first two batch ends
    assert epochs == [1, 1, 3, 3]


def test_a_bad_duration_names_the_argument(tmp_path):
    with pytest.raises(MisconfigurationError, match=r"val_check_interval='10:00': a duration string is 'DD:HH:MM:SS'"):
        quiet(default_root_dir=tmp_path, val_check_interval="10:00")


# ---------------------------------------------------------------- max_epochs not given
def test_max_epochs_stays_unset_until_fit(tmp_path):
    trainer = quiet(default_root_dir=tmp_path, limit_train_batches=1, limit_val_batches=0)
    assert trainer.max_epochs is None and trainer.max_steps == -1

    class StopsAtOnce(Counting):
        def training_step(self, batch, batch_idx):
            self.trainer.should_stop = True
            return super().training_step(batch, batch_idx)

    with pytest.warns(UserWarning, match=r"`max_epochs` was not set. Setting it to 1000 epochs"):
        trainer.fit(StopsAtOnce())
    assert trainer.max_epochs == 1000 and trainer.current_epoch == 1


def test_max_steps_alone_bounds_fit_without_a_warning(tmp_path):
    trainer = quiet(default_root_dir=tmp_path, max_steps=3, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*max_epochs")
        trainer.fit(Counting())
    assert trainer.max_epochs == -1 and trainer.global_step == 3



class Positions(ToyModel):
    """ToyModel noting (current_epoch, batch_idx, global_step) at each training step, and current_epoch at
    on_train_end."""

    def __init__(self):
        super().__init__()
        self.steps, self.at_train_end = [], None

    def training_step(self, batch, batch_idx):
        self.steps.append((self.current_epoch, batch_idx, self.global_step))
        return super().training_step(batch, batch_idx)

    def on_train_end(self):
        self.at_train_end = self.current_epoch


@pytest.mark.parametrize(("max_steps", "epochs"), [(5, 2), (6, 2), (4, 2), (2, 1)])
def test_an_epoch_that_max_steps_ends_early_counts_in_current_epoch(tmp_path, max_steps, epochs):
    # 3 batches an epoch: max_steps 5 ends inside epoch 1, 6 at its end; both make current_epoch 2, as in Lightning
    model = Positions()
    trainer = quiet(default_root_dir=tmp_path, max_steps=max_steps, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(model)
    assert trainer.global_step == max_steps
    assert trainer.current_epoch == epochs and model.at_train_end == epochs
    assert model.current_epoch == epochs


def test_a_checkpoint_after_an_early_ended_epoch_resumes_inside_it(tmp_path):
    model = Positions()
    trainer = quiet(default_root_dir=tmp_path, max_steps=5, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(model)
    path = str(tmp_path / "after.ckpt")
    trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=False)["epoch"] == 1  # the epoch the run is inside, as a mid-epoch save says
    resumed = Positions()
    trainer = quiet(default_root_dir=tmp_path, max_steps=9, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(resumed, ckpt_path=path)
    # the next batch of epoch 1, then epoch 2: the batches an uninterrupted run of 9 steps takes
    assert resumed.steps == [(1, 2, 5), (2, 0, 6), (2, 1, 7), (2, 2, 8)]
    assert trainer.current_epoch == 3 and trainer.global_step == 9


def test_the_file_saved_at_the_end_of_an_early_ended_epoch_is_named_by_that_epoch(tmp_path):
    # Lightning's name for it: epoch=1-step=5 (the epoch it was cut in), though current_epoch is 2 afterwards
    trainer = quiet(default_root_dir=tmp_path, max_steps=5, limit_train_batches=3, limit_val_batches=0,
                    enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)])
    trainer.fit(Positions())
    assert sorted(os.listdir(tmp_path / "ck")) == ["epoch=1-step=5.ckpt", "last.ckpt"]
    assert trainer.current_epoch == 2

def test_a_stop_inside_an_epoch_counts_it(tmp_path):
    class StopsAtStep4(Positions):
        def on_train_batch_end(self, outputs, batch, batch_idx):
            if self.global_step == 4:
                self.trainer.should_stop = True

    model = StopsAtStep4()
    trainer = quiet(default_root_dir=tmp_path, max_epochs=5, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(model)
    assert model.steps[-1] == (1, 0, 3)  # the last step: epoch 1, batch 0
    assert (trainer.global_step, trainer.current_epoch, model.at_train_end) == (4, 2, 2)

# ---------------------------------------------------------------- validation data and validation_step
def test_val_data_without_validation_step_warns_and_skips(tmp_path):
    model = Counting()
    model.validation_step = None
    trainer = quiet(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2)
    with pytest.warns(UserWarning, match=r"You passed in a `val_dataloader` but have no `validation_step`. "
                                         r"Skipping val loop"):
        trainer.fit(model)
    assert trainer.val_dataloaders is None and trainer.num_val_batches == []


def test_validation_step_without_val_data_warns(tmp_path):
    model = Counting()
    model.val_dataloader = None
    trainer = quiet(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2)
    with pytest.warns(UserWarning, match=r"You defined a `validation_step` but have no `val_dataloader`"):
        trainer.fit(model)
    assert model.validated == 0


def test_matching_val_data_and_step_are_silent(tmp_path):
    model = Counting()
    trainer = quiet(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*Skipping val loop")
        trainer.fit(model)
    assert model.validated == 1


# ---------------------------------------------------------------- fast_dev_run
@pytest.mark.parametrize("value, stored, n", [(True, True, 1), (1, True, 1), (4, 4, 4), (False, False, 0), (0, 0, 0)])
def test_fast_dev_run_values(tmp_path, value, stored, n):
    trainer = quiet(default_root_dir=tmp_path, fast_dev_run=value, max_epochs=7)
    assert trainer.fast_dev_run == stored and type(trainer.fast_dev_run) is type(stored)
    if n:
        assert (trainer.max_steps, trainer.max_epochs, trainer.num_sanity_val_steps) == (n, 1, 0)
        assert trainer.limit_test_batches == n


def test_fast_dev_run_keeps_the_users_callbacks_and_saves_nothing(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), monitor="val_loss")
    stopping = EarlyStopping(monitor="val_loss")
    model = Counting()
    trainer = surge.Trainer(default_root_dir=tmp_path, fast_dev_run=2, callbacks=[checkpoint, stopping],
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    assert trainer.checkpoint_callback is checkpoint and trainer.early_stopping_callback is stopping
    assert type(trainer.logger).__name__ == "DummyLogger" and trainer.logger.name == trainer.logger.version == ""
    model.on_train_start = lambda: model.logger.experiment.add_image("x", torch.zeros(3, 2, 2))  # a no-op
    trainer.fit(model)
    assert model.trained == 2 and model.validated == 2
    assert not os.path.exists(tmp_path / "ckpt") and list(tmp_path.iterdir()) == []
    assert quiet(default_root_dir=tmp_path, fast_dev_run=True).loggers == []  # logger=False stays without one


def test_fast_dev_run_with_overfit_batches(tmp_path):
    trainer = quiet(default_root_dir=tmp_path, fast_dev_run=2, overfit_batches=3)
    # overfit_batches decides the train and val batches, fast_dev_run the others
    assert (trainer.limit_train_batches, trainer.limit_val_batches) == (3, 3)
    assert (trainer.limit_test_batches, trainer.limit_predict_batches) == (2, 2)


# ---------------------------------------------------------------- accumulate_grad_batches
def test_accumulate_grad_batches_takes_an_int(tmp_path):
    assert quiet(default_root_dir=tmp_path, accumulate_grad_batches=4).accumulate_grad_batches == 4
    with pytest.raises(MisconfigurationError, match=r"accumulate_grad_batches=\{0: 2, 4: 8\}: a schedule"):
        quiet(default_root_dir=tmp_path, accumulate_grad_batches={0: 2, 4: 8})
    with pytest.raises(MisconfigurationError, match=r"accumulate_grad_batches must be an int >= 1, got 2.0"):
        quiet(default_root_dir=tmp_path, accumulate_grad_batches=2.0)


def test_a_callback_can_change_accumulation_by_epoch(tmp_path):
    class Schedule(surge.Callback):  # what a {0: 1, 1: 2} schedule did in Lightning 1.x
        def on_train_epoch_start(self, trainer, module):
            trainer.accumulate_grad_batches = {0: 1, 1: 2}[trainer.current_epoch]

    trainer = quiet(default_root_dir=tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[Schedule()])
    trainer.fit(Counting())  # 8 batches an epoch: 8 steps, then 4
    assert trainer.global_step == 12


def test_accumulation_under_manual_optimisation_is_refused(tmp_path):
    class Manual(ToyModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self.loss(batch))
            opt.step()

    trainer = quiet(default_root_dir=tmp_path, accumulate_grad_batches=2, max_epochs=1)
    with pytest.raises(MisconfigurationError, match=r"Automatic gradient accumulation is not supported for manual "
                                                    r"optimization: remove `Trainer\(accumulate_grad_batches=2\)`"):
        trainer.fit(Manual())


# ---------------------------------------------------------------- limits in evaluation
def test_limits_in_validate_test_and_predict(tmp_path):
    model = Counting()
    trainer = quiet(default_root_dir=tmp_path, limit_val_batches=0.5, limit_test_batches=3, limit_predict_batches=1)
    trainer.validate(model, verbose=False)
    assert trainer.num_val_batches == [2] and model.validated == 2  # 32 samples / 8 = 4 batches; half
    trainer.test(model, verbose=False)
    assert trainer.num_test_batches == [3]
    assert len(trainer.predict(model)) == 1


def test_inference_mode_switch(tmp_path):
    seen = []

    class Records(ToyModel):
        def on_validation_start(self):
            seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))

    for mode in (True, False):
        quiet(default_root_dir=tmp_path, inference_mode=mode, limit_val_batches=1).validate(Records(), verbose=False)
    assert seen == [(False, True), (False, False)]


def test_min_steps_keep_fit_going_past_an_early_stop(tmp_path):
    class StopsAtOnce(Counting):
        def training_step(self, batch, batch_idx):
            self.trainer.should_stop = True
            return super().training_step(batch, batch_idx)

    model = StopsAtOnce()
    trainer = quiet(default_root_dir=tmp_path, min_steps=5, max_epochs=10, limit_val_batches=0)
    trainer.fit(model)
    assert trainer.global_step == 5 and model.trained == 5


def test_a_stop_asked_before_min_steps_stays_asked_and_ends_fit_at_min_steps_after_a_validation(tmp_path, capsys):
    # 4 batches an epoch; the stop is asked once, at the first epoch's end; min_steps=10 falls inside epoch 2.
    seen = []

    class AsksOnce(Counting):
        def on_train_epoch_end(self):
            self.trainer.should_stop = self.trainer.should_stop or self.current_epoch == 0

        def on_train_batch_end(self, outputs, batch, batch_idx):
            seen.append((self.trainer.global_step, self.trainer.should_stop, self.validated))

    model = AsksOnce()
    trainer = quiet(default_root_dir=tmp_path, min_steps=10, max_epochs=10, limit_train_batches=4, limit_val_batches=2,
                    num_sanity_val_steps=0)
    trainer.fit(model)
    assert trainer.global_step == 10 and model.trained == 10 and trainer.should_stop
    assert [asked for _, asked, _ in seen] == [False] * 4 + [True] * 6, seen  # asked once, never cleared
    # validations: at the end of epochs 0 and 1 (2 batches each), then once more at step 10, where fit stops
    assert model.validated == 6 and seen[-1][2] == 4
    assert capsys.readouterr().out.count("min_steps=10 has not been met. Training will continue") == 1


def test_a_stop_asked_in_the_last_batchs_validation_validates_once(tmp_path):
    # val_check_interval=4 of 4 batches: the validation at the last batch is the check; it asks to stop.
    class StopsInValidation(Counting):
        def on_validation_end(self):
            self.trainer.should_stop = True

    model = StopsInValidation()
    trainer = quiet(default_root_dir=tmp_path, max_epochs=3, limit_train_batches=4, val_check_interval=4,
                    limit_val_batches=2, num_sanity_val_steps=0)
    trainer.fit(model)
    assert trainer.global_step == 4 and model.validated == 2  # one validation of 2 batches, not a second for the stop


def test_train_loader_of_known_length_with_overfit_fraction(tmp_path):
    model = Counting()
    model.validation_step = None
    model.val_dataloader = None
    trainer = quiet(default_root_dir=tmp_path, max_epochs=1, overfit_batches=0.25)
    trainer.fit(model, DataLoader(ToyDataset(32, 64), batch_size=8, shuffle=True))
    assert trainer.num_training_batches == 2 and model.trained == 2


def test_fit_loop_max_epochs_set_between_fits_trains_on_with_the_same_trainer(tmp_path):
    # Lightning users' idiom for "train some more": trainer.fit_loop.max_epochs = N, then fit again.
    model = Counting()
    trainer = quiet(default_root_dir=tmp_path, max_epochs=2, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(model)
    assert trainer.fit_loop.max_epochs == 2 and trainer.fit_loop.epoch_progress.current.completed == 2
    trainer.fit_loop.max_epochs = 5
    trainer.fit_loop.max_steps = -1
    trainer.fit(model)
    assert trainer.current_epoch == 5 and model.trained == 20 and trainer.max_epochs == 5
    assert trainer.fit_loop.epoch_loop.global_step == 20 == trainer.global_step
    trainer.fit_loop.epoch_loop.max_steps = 24  # the epoch loop's name for the same limit
    trainer.fit_loop.max_epochs = -1
    trainer.fit(model)
    assert trainer.global_step == 24 and trainer.max_steps == 24
    with pytest.raises(surge.utils.MisconfigurationError, match=r"trainer.fit_loop.max_epochs must be an int >= -1"):
        trainer.fit_loop.max_epochs = "ten"
    with pytest.raises(AttributeError, match="surge has no Lightning loop objects"):
        trainer.fit_loop.epoch_loop.val_loop


def test_fit_loop_batch_indices_count_a_batch_from_its_start(tmp_path):
    class Recording(Counting):
        def __init__(self):
            super().__init__()
            self.seen = []

        def note(self, where, batch_idx=None):
            loop = self.trainer.fit_loop
            self.seen.append((where, loop.total_batch_idx, loop.epoch_loop.batch_idx, batch_idx))

        def on_train_epoch_start(self):
            self.note("epoch start")

        def on_train_batch_start(self, batch, batch_idx):
            self.note("start", batch_idx)

        def training_step(self, batch, batch_idx):
            self.note("step", batch_idx)
            return super().training_step(batch, batch_idx)

        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.note("end", batch_idx)

        def validation_step(self, batch, batch_idx):
            if not self.trainer.sanity_checking:
                self.note("val")
            return super().validation_step(batch, batch_idx)

    model = Recording()
    # 4 batches an epoch, validation every 3 training batches counted across epochs (Lightning's own test)
    trainer = quiet(default_root_dir=tmp_path, max_steps=12, limit_train_batches=4, limit_val_batches=1,
                    val_check_interval=3, check_val_every_n_epoch=None, num_sanity_val_steps=0)
    assert trainer.fit_loop.total_batch_idx == -1
    trainer.fit(model)
    assert [(total, idx) for where, total, idx, _ in model.seen if where == "epoch start"] == [(-1, -1), (3, 3), (7, 3)]
    inside = [(where, total, idx, batch_idx) for where, total, idx, batch_idx in model.seen
              if where in ("start", "step", "end")]
    # every hook of a batch sees that batch's own indices: over the fit (0..11) and in its epoch (0..3)
    assert inside == [(where, g, g % 4, g % 4) for g in range(12) for where in ("start", "step", "end")]
    assert [total + 1 for where, total, _, _ in model.seen if where == "val"] == [3, 6, 9, 12]
    # after fit, as between epochs (on_train_epoch_start above), the last batch's: Lightning's values
    assert trainer.fit_loop.total_batch_idx == 11 and trainer.fit_loop.epoch_loop.batch_idx == 3
