"""Each Trainer argument does what it says, checked by counting what really ran."""
import csv
import os
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

import surge
from surge.callbacks import EarlyStopping, ModelCheckpoint, ModelSummary, ProgressBar
from surge.demos.toy import ToyModel, ToyDataset
from surge.loggers import CSVLogger
from surge.utils import MisconfigurationError


class Counting(ToyModel):
    """ToyModel recording which batches each step saw, and in which epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_calls, self.val_calls, self.test_calls, self.pred_calls = [], [], [], []
        self.train_batches = []

    def training_step(self, batch, batch_idx):
        self.train_calls.append((self.current_epoch, batch_idx))
        self.train_batches.append(batch.clone())
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.val_calls.append((self.current_epoch, self.global_step, self.trainer.sanity_checking))
        return super().validation_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self.test_calls.append(batch_idx)
        return super().test_step(batch, batch_idx)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        self.pred_calls.append(batch_idx)
        return super().predict_step(batch, batch_idx, dataloader_idx)


def make_trainer(tmp_path, **kwargs):
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("enable_model_summary", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("logger", False)
    kwargs.setdefault("num_sanity_val_steps", 0)
    kwargs.setdefault("accelerator", "cpu")
    return surge.Trainer(default_root_dir=tmp_path, **kwargs)


def fit_val_calls(model):
    return [c for c in model.val_calls if not c[2]]


# ---------------------------------------------------------------- how long
def test_max_epochs(tmp_path):
    model = Counting()  # 64 samples / 8 = 8 batches per epoch
    trainer = make_trainer(tmp_path, max_epochs=3)
    trainer.fit(model)
    assert len(model.train_calls) == 24
    assert {e for e, _ in model.train_calls} == {0, 1, 2}
    assert trainer.current_epoch == 3
    assert trainer.global_step == 24


def test_max_steps_stops_mid_epoch(tmp_path):
    model = Counting()
    trainer = make_trainer(tmp_path, max_steps=11)
    trainer.fit(model)
    assert len(model.train_calls) == 11
    assert trainer.global_step == 11
    assert model.train_calls[-1] == (1, 2)


def test_max_steps_wins_over_max_epochs(tmp_path):
    model = Counting()
    trainer = make_trainer(tmp_path, max_epochs=10, max_steps=5)
    trainer.fit(model)
    assert trainer.global_step == 5


class StopAtOnce(surge.Callback):
    """Asks to stop at the end of every training epoch, like an impatient EarlyStopping."""

    def on_train_epoch_end(self, trainer, module):
        trainer.should_stop = True


def test_min_epochs_overrides_an_early_stop_request(tmp_path):
    model = Counting()
    trainer = make_trainer(tmp_path, max_epochs=10, min_epochs=3, limit_train_batches=2, callbacks=[StopAtOnce()])
    trainer.fit(model)
    assert trainer.current_epoch == 3
    assert len(model.train_calls) == 6


def test_min_epochs_with_early_stopping(tmp_path):
    class Worsening(Counting):
        def validation_step(self, batch, batch_idx):
            self.val_calls.append((self.current_epoch, self.global_step, self.trainer.sanity_checking))
            self.log("val_loss", torch.tensor(float(self.current_epoch)))  # gets worse every epoch

    model = Worsening()
    early = EarlyStopping("val_loss", patience=0)
    trainer = make_trainer(tmp_path, max_epochs=10, min_epochs=4, limit_train_batches=2, limit_val_batches=1,
                           callbacks=[early])
    trainer.fit(model)
    # patience=0: the second check (epoch 1) asks to stop, but min_epochs keeps it going to 4 epochs
    assert trainer.current_epoch == 4
    assert {e for e, _ in model.train_calls} == {0, 1, 2, 3}

    model = Worsening()
    trainer = make_trainer(tmp_path, max_epochs=10, limit_train_batches=2, limit_val_batches=1,
                           callbacks=[EarlyStopping("val_loss", patience=0)])
    trainer.fit(model)
    assert trainer.current_epoch == 2  # without min_epochs it stops after the second epoch


# ---------------------------------------------------------------- limits
@pytest.mark.parametrize("limit, expected", [(3, 3), (0.25, 2), (1.0, 8), (100, 8)])
def test_limit_train_batches(tmp_path, limit, expected):
    model = Counting()
    trainer = make_trainer(tmp_path, max_epochs=2, limit_train_batches=limit, limit_val_batches=0)
    trainer.fit(model)
    assert [b for e, b in model.train_calls if e == 0] == list(range(expected))
    assert [b for e, b in model.train_calls if e == 1] == list(range(expected))
    assert trainer.num_training_batches == expected


@pytest.mark.parametrize("limit, expected", [(2, 2), (0.5, 2), (1.0, 4), (0, 0)])
def test_limit_val_batches(tmp_path, limit, expected):
    model = Counting()  # 32 val samples / 8 = 4 batches
    trainer = make_trainer(tmp_path, max_epochs=2, limit_train_batches=1, limit_val_batches=limit)
    trainer.fit(model)
    assert len(fit_val_calls(model)) == 2 * expected


@pytest.mark.parametrize("limit, expected", [(3, 3), (0.5, 2), (1.0, 4)])
def test_limit_test_batches(tmp_path, limit, expected):
    model = Counting()
    trainer = make_trainer(tmp_path, limit_test_batches=limit)
    trainer.test(model, verbose=False)
    assert model.test_calls == list(range(expected))


@pytest.mark.parametrize("limit, expected", [(1, 1), (0.5, 1), (1.0, 2)])
def test_limit_predict_batches(tmp_path, limit, expected):
    model = Counting()  # 16 predict samples / 8 = 2 batches
    trainer = make_trainer(tmp_path, limit_predict_batches=limit)
    out = trainer.predict(model)
    assert model.pred_calls == list(range(expected))
    assert len(out) == expected


# ---------------------------------------------------------------- when validation runs
@pytest.mark.parametrize("interval, steps", [(0.25, [2, 4, 6, 8]), (0.5, [4, 8]), (0.375, [3, 6]), (1.0, [8])])
def test_val_check_interval_float(tmp_path, interval, steps):
    model = Counting()
    trainer = make_trainer(tmp_path, max_epochs=1, val_check_interval=interval, limit_val_batches=1)
    trainer.fit(model)
    # 8 batches; 0.25 validates every 2 batches, the epoch's last batch included
    assert [s for _, s, _ in fit_val_calls(model)] == steps


def test_val_check_interval_int(tmp_path):
    model = Counting()
    trainer = make_trainer(tmp_path, max_epochs=2, val_check_interval=3, limit_val_batches=1)
    trainer.fit(model)
    # counted within each epoch of 8 batches: after batches 3 and 6 of each epoch
    assert [s for _, s, _ in fit_val_calls(model)] == [3, 6, 11, 14]


def test_val_check_interval_int_across_epochs(tmp_path):
    model = Counting()
    trainer = make_trainer(tmp_path, max_epochs=2, val_check_interval=5, check_val_every_n_epoch=None,
                           limit_val_batches=1)
    trainer.fit(model)
    assert [s for _, s, _ in fit_val_calls(model)] == [5, 10, 15]


def test_check_val_every_n_epoch(tmp_path):
    model = Counting()
    trainer = make_trainer(tmp_path, max_epochs=5, check_val_every_n_epoch=2, limit_train_batches=1,
                           limit_val_batches=1)
    trainer.fit(model)
    assert [e for e, _, _ in fit_val_calls(model)] == [1, 3]


@pytest.mark.parametrize("options, asked, steps", [
    ({}, 0, [8, 16]),                                   # val_check_interval=1.0: only an epoch's end validates
    ({"check_val_every_n_epoch": 2}, 0, [16]),          # the first epoch does not validate at all
    ({"val_check_interval": 0.5}, 16, [4, 8, 12, 16]),  # every batch may be a check point
    ({"val_check_interval": 3}, 16, [3, 6, 11, 14]),
])
def test_the_per_batch_validation_check_runs_only_where_it_can_say_yes(tmp_path, monkeypatch, options, asked, steps):
    # The loop skips the per-batch check in an epoch where validation can only come at its end (the default);
    # where it may come inside the epoch, every batch asks. Validation runs where it always did.
    inside = []
    original = surge.Trainer._val_due

    def counting(self, batch_idx, limit, end_of_epoch):
        if not end_of_epoch:
            inside.append(batch_idx)
        return original(self, batch_idx, limit, end_of_epoch)

    monkeypatch.setattr(surge.Trainer, "_val_due", counting)
    model = Counting()
    make_trainer(tmp_path, max_epochs=2, limit_val_batches=1, **options).fit(model)
    assert len(inside) == asked
    assert [s for _, s, _ in fit_val_calls(model)] == steps


@pytest.mark.parametrize("n, expected", [(0, 0), (2, 2), (-1, 4)])
def test_num_sanity_val_steps(tmp_path, n, expected):
    model = Counting()
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1.0,
                           num_sanity_val_steps=n)
    trainer.fit(model)
    sanity = [c for c in model.val_calls if c[2]]
    assert len(sanity) == expected
    assert all(step == 0 for _, step, _ in sanity)
    assert len(fit_val_calls(model)) == 4


def test_sanity_check_respects_limit_val_batches(tmp_path):
    model = Counting()
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                           num_sanity_val_steps=-1)
    trainer.fit(model)
    assert len([c for c in model.val_calls if c[2]]) == 1


# ---------------------------------------------------------------- logging cadence
def read_csv(logger):
    path = os.path.join(logger.log_dir, "metrics.csv")
    if not os.path.exists(path):  # nothing was logged
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("every, expected_steps", [(1, list(range(1, 17))), (5, [5, 10, 15]), (50, [])])
def test_log_every_n_steps(tmp_path, every, expected_steps):
    model = Counting()
    logger = CSVLogger(tmp_path, name="run")
    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0, logger=logger, log_every_n_steps=every)
    trainer.fit(model)
    rows = read_csv(logger)
    step_rows = [r for r in rows if r.get("train_loss")]
    # a row is written after the n-th optimizer step, so it carries global_step n
    assert [int(r["step"]) for r in step_rows] == expected_steps


# ---------------------------------------------------------------- quick runs
@pytest.mark.parametrize("value, n", [(True, 1), (3, 3)])
def test_fast_dev_run(tmp_path, value, n):
    model = Counting()
    trainer = surge.Trainer(fast_dev_run=value, default_root_dir=tmp_path, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu", max_epochs=5)
    trainer.fit(model)
    assert len(model.train_calls) == n
    assert [c for c in model.val_calls if c[2]] == []  # no sanity check
    assert len(fit_val_calls(model)) == n
    trainer.test(model, verbose=False)
    assert model.test_calls == list(range(n))
    trainer.validate(model, verbose=False)
    assert len(model.val_calls) == 2 * n
    assert len(trainer.predict(model)) == min(n, 2)
    # as in Lightning: the default logger becomes a DummyLogger, which writes nothing
    assert [type(lg).__name__ for lg in trainer.loggers] == ["DummyLogger"]
    assert trainer.checkpoint_callback is None
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_overfit_batches_is_unshuffled_and_limited(tmp_path):
    class Shuffled(Counting):
        def train_dataloader(self):
            return DataLoader(ToyDataset(32, 64, seed=1), batch_size=8, shuffle=True)

    model = Shuffled()
    trainer = make_trainer(tmp_path, max_epochs=2, overfit_batches=2)
    trainer.fit(model)
    data = ToyDataset(32, 64, seed=1).data
    assert len(model.train_batches) == 4
    for i, batch in enumerate(model.train_batches):
        assert torch.equal(batch, data[(i % 2) * 8:(i % 2) * 8 + 8])
    assert trainer.num_training_batches == 2
    assert trainer.num_val_batches == [2]


def test_deterministic(tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    try:
        make_trainer(tmp_path, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        make_trainer(tmp_path, deterministic="warn")
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        with pytest.raises(MisconfigurationError, match="deterministic"):
            make_trainer(tmp_path, deterministic="yes")
    finally:
        torch.use_deterministic_algorithms(before)


def test_deterministic_runs_match(tmp_path):
    def run():
        surge.seed_everything(7)
        model = ToyModel()
        make_trainer(tmp_path, max_epochs=1, deterministic=True).fit(model)
        return model.layer.weight.detach().clone()

    before = torch.are_deterministic_algorithms_enabled()
    try:
        assert torch.equal(run(), run())
    finally:
        torch.use_deterministic_algorithms(before)


def test_default_root_dir_holds_logs_and_checkpoints(tmp_path):
    model = ToyModel()
    trainer = surge.Trainer(default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                            logger=CSVLogger(tmp_path))
    trainer.fit(model)
    assert trainer.default_root_dir == str(tmp_path)
    ckpts = [p for p in tmp_path.rglob("*.ckpt")]
    assert ckpts and all(str(p).startswith(str(tmp_path)) for p in ckpts)
    assert (tmp_path / "surge_logs" / "version_0" / "metrics.csv").is_file()


def test_default_root_dir_defaults_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer = surge.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu")
    assert trainer.default_root_dir == str(tmp_path)


# ---------------------------------------------------------------- default callbacks
@pytest.mark.parametrize("ckpt", [True, False])
@pytest.mark.parametrize("bar", [True, False])
@pytest.mark.parametrize("summary", [True, False])
def test_default_callbacks(tmp_path, ckpt, bar, summary):
    trainer = surge.Trainer(default_root_dir=tmp_path, logger=False, accelerator="cpu", enable_checkpointing=ckpt,
                            enable_progress_bar=bar, enable_model_summary=summary)
    kinds = [type(cb) for cb in trainer.callbacks]
    assert (sum(isinstance(cb, ModelCheckpoint) for cb in trainer.callbacks) == 1) is ckpt
    assert (sum(isinstance(cb, ProgressBar) for cb in trainer.callbacks) == 1) is bar
    assert (sum(isinstance(cb, ModelSummary) for cb in trainer.callbacks) == 1) is summary
    assert len(kinds) == ckpt + bar + summary
    if ckpt:
        assert isinstance(trainer.callbacks[-1], ModelCheckpoint)  # checkpointing runs last


def test_user_checkpoint_is_not_duplicated(tmp_path):
    mine = ModelCheckpoint(monitor="val_loss")
    trainer = surge.Trainer(default_root_dir=tmp_path, logger=False, accelerator="cpu", callbacks=[mine])
    assert trainer.checkpoint_callbacks == [mine]
    with pytest.raises(MisconfigurationError, match="enable_checkpointing=False"):
        surge.Trainer(default_root_dir=tmp_path, logger=False, callbacks=[mine], enable_checkpointing=False)


def test_model_summary_prints(tmp_path, capsys):
    trainer = surge.Trainer(default_root_dir=tmp_path, logger=False, accelerator="cpu", enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=True, max_steps=1, limit_val_batches=0)
    trainer.fit(ToyModel())
    assert "layer" in capsys.readouterr().out


# ---------------------------------------------------------------- devices
@pytest.mark.parametrize("devices", [1, "1", [0], "auto"])
def test_cpu_devices(tmp_path, devices):
    trainer = make_trainer(tmp_path, accelerator="cpu", devices=devices, max_steps=1, limit_val_batches=0)
    assert trainer.num_devices == 1
    assert trainer.strategy.root_device.type == "cpu"
    model = ToyModel()
    trainer.fit(model)
    assert model.device.type == "cpu"


@pytest.mark.parametrize("devices", [0, "x", [0, 0], True])
def test_bad_devices(tmp_path, devices):
    with pytest.raises(MisconfigurationError, match=r"devices="):
        make_trainer(tmp_path, accelerator="cpu", devices=devices)


def test_unknown_accelerator(tmp_path):
    with pytest.raises(MisconfigurationError, match=r"accelerator='tpu' is not supported; choose one of"):
        make_trainer(tmp_path, accelerator="tpu")


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="needs a machine without GPU")
def test_gpu_without_gpu(tmp_path):
    with pytest.raises(MisconfigurationError, match=r"accelerator='gpu' but no GPU is available"):
        make_trainer(tmp_path, accelerator="gpu")
    with pytest.raises(MisconfigurationError, match=r"accelerator='cuda' but torch finds no CUDA device"):
        make_trainer(tmp_path, accelerator="cuda", devices=1)


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="needs a machine without GPU")
def test_legacy_gpus_nonzero_without_gpu(tmp_path):
    with pytest.warns(DeprecationWarning, match="gpus=1"), pytest.raises(MisconfigurationError, match="no GPU"):
        surge.Trainer(gpus=1, logger=False, default_root_dir=tmp_path)


def test_legacy_gpus_zero_runs_on_cpu(tmp_path):
    with pytest.warns(DeprecationWarning, match=r"gpus=0.*accelerator='cpu'"):
        trainer = surge.Trainer(gpus=0, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                                enable_model_summary=False, enable_checkpointing=False, max_steps=2,
                                limit_val_batches=0)
    assert trainer.strategy.root_device.type == "cpu"
    model = ToyModel()
    trainer.fit(model)
    assert trainer.global_step == 2
    assert model.device.type == "cpu"


@pytest.mark.parametrize("legacy, attr, value", [
    ({"checkpoint_callback": False}, "checkpoint_callback", None),
    ({"weights_summary": None}, "callbacks", []),
])
def test_other_legacy_arguments(tmp_path, legacy, attr, value):
    with pytest.warns(DeprecationWarning):
        trainer = surge.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                                enable_checkpointing=True, **legacy)
    if attr == "callbacks":
        assert not any(isinstance(cb, ModelSummary) for cb in trainer.callbacks)
    else:
        assert getattr(trainer, attr) is value


def test_resume_from_checkpoint_legacy(tmp_path):
    model = ToyModel()
    trainer = make_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model)
    path = tmp_path / "a.ckpt"
    trainer.save_checkpoint(str(path))
    with pytest.warns(DeprecationWarning, match="resume_from_checkpoint"):
        trainer = make_trainer(tmp_path, max_steps=4, limit_val_batches=0, resume_from_checkpoint=str(path))
    trainer.fit(ToyModel())
    assert trainer.ckpt_path == str(path)
    assert trainer.global_step == 4


def test_no_warning_for_modern_arguments(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_trainer(tmp_path, max_epochs=1)
