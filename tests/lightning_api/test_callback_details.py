"""Details Lightning code reads from callbacks, loggers and the Trainer: state keys as Lightning writes them (and
surge's earlier keys still read), kth_best_model_path, the progress bar's totals, early_stopping_callbacks,
overfit_batches turning shuffling off with a warning, logging under barebones, CSV rows without a step and
hparams.yaml read back."""
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler

import surge
from surge.callbacks import EarlyStopping, ModelCheckpoint
from surge.demos.boring import BoringModel, RandomDataset
from surge.loggers import CSVLogger
from surge.loggers.base import load_hparams_from_yaml


def quiet(tmp_path, **kwargs):
    for key, value in dict(logger=False, enable_progress_bar=False, enable_model_summary=False,
                           accelerator="cpu").items():
        kwargs.setdefault(key, value)
    return surge.Trainer(default_root_dir=tmp_path, **kwargs)


class Logs(BoringModel):
    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        self.log("val_loss", out["x"])
        return out


def test_state_keys_are_lightnings_and_surges_earlier_keys_still_load(tmp_path):
    es = EarlyStopping("val_loss")
    assert es.state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"
    mc = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_last=True)
    assert mc.state_key == ("ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, "
                            "'every_n_epochs': 1, 'train_time_interval': None}")
    quiet(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=2, callbacks=[es, mc]).fit(Logs())
    ckpt = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)
    assert es.state_key in ckpt["callbacks"] and mc.state_key in ckpt["callbacks"]
    # a checkpoint of surge 0.x names EarlyStopping by its old key: the state is still read
    ckpt["callbacks"]["EarlyStopping{monitor='val_loss', mode='min'}"] = {
        **ckpt["callbacks"].pop(es.state_key), "wait_count": 7, "best_score": torch.tensor(-1e9)}
    torch.save(ckpt, tmp_path / "old.ckpt")
    again = EarlyStopping("val_loss", patience=100)
    quiet(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=2, callbacks=[again],
          enable_checkpointing=False).fit(Logs(), ckpt_path=str(tmp_path / "old.ckpt"))
    assert again.wait_count == 8  # read from the old key, then one more epoch without improvement


def test_kth_best_model_path_is_the_one_the_next_better_replaces(tmp_path):
    scores = iter([3.0, 1.0, 2.0])

    class Scored(BoringModel):
        def on_validation_epoch_end(self):
            self.log("score", next(scores))

    mc = ModelCheckpoint(dirpath=tmp_path, monitor="score", save_top_k=2, filename="{epoch}")
    assert mc.kth_best_model_path == "" and float(mc.kth_value) == float("inf")  # nothing kept yet
    trainer = quiet(tmp_path, max_epochs=3, limit_train_batches=1, limit_val_batches=1, callbacks=[mc],
                    num_sanity_val_steps=0)
    trainer.fit(Scored())
    assert mc.kth_best_model_path.endswith("epoch=2.ckpt") and float(mc.kth_value) == 2.0
    assert mc.best_model_path.endswith("epoch=1.ckpt")
    assert trainer.early_stopping_callbacks == [] and trainer.early_stopping_callback is None


def test_the_progress_bar_totals_follow_the_epochs_that_validate(tmp_path):
    seen = []

    class Model(BoringModel):
        def on_train_epoch_end(self):
            bar = self.trainer.progress_bar_callback
            seen.append((bar.total_train_batches, bar.total_val_batches))

    trainer = surge.Trainer(default_root_dir=tmp_path, max_epochs=4, limit_train_batches=3, limit_val_batches=2,
                            check_val_every_n_epoch=2, num_sanity_val_steps=0, logger=False,
                            enable_checkpointing=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Model())
    assert seen == [(3, 0), (3, 2), (3, 0), (3, 2)]
    trainer.test(Model(), verbose=False)
    assert trainer.progress_bar_callback.total_test_batches == 64


def test_overfit_batches_turns_shuffling_off_with_a_warning(tmp_path):
    first = []

    class Shuffled(BoringModel):
        def train_dataloader(self):
            data = RandomDataset(32, 64)
            return DataLoader(data, sampler=RandomSampler(data))

        def training_step(self, batch, batch_idx):
            if batch_idx == 0:
                first.append(batch.clone())
            return super().training_step(batch, batch_idx)

    trainer = quiet(tmp_path, max_epochs=2, overfit_batches=2, enable_checkpointing=False)
    with pytest.warns(UserWarning, match="requested to overfit but enabled train dataloader shuffling"):
        trainer.fit(Shuffled())
    assert torch.equal(first[0], first[1])  # the same first batch every epoch


def test_self_log_under_barebones_warns_at_every_call(tmp_path):
    calls = []

    class Model(BoringModel):
        def training_step(self, batch, batch_idx):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.log("a", 1.0)
                self.log_dict({"b": 2.0})
            calls.append([str(w.message) for w in caught])
            return super().training_step(batch, batch_idx)

    surge.Trainer(default_root_dir=tmp_path, barebones=True, max_steps=2, accelerator="cpu").fit(Model())
    assert len(calls) == 2 and all(len(c) == 2 and all("`Trainer(barebones=True)` is configured" in m for m in c)
                                   for c in calls)


def test_csv_rows_without_a_step_and_hparams_read_back(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"a": 1.0})
    logger.log_metrics({"a": 2.0})
    assert [row["step"] for row in logger.experiment.metrics] == ["0", "1"]
    logger.save()
    assert logger.experiment.metrics == []
    assert open(logger.experiment.metrics_file_path).read().splitlines() == ["step,a", "0,1.0", "1,2.0"]
    logger.log_hyperparams({"lr": 0.1, "layers": [1, 2], "act": torch.nn.ReLU})
    loaded = load_hparams_from_yaml(f"{logger.log_dir}/{logger.experiment.NAME_HPARAMS_FILE}")
    assert loaded["lr"] == 0.1 and loaded["layers"] == [1, 2] and "ReLU" in loaded["act"]
    with pytest.warns(UserWarning, match="does not exist"):
        assert load_hparams_from_yaml(tmp_path / "none.yaml") == {}


def test_resuming_a_checkpoint_past_max_epochs_is_an_error(tmp_path):
    mc = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    quiet(tmp_path, max_epochs=3, limit_train_batches=1, limit_val_batches=0, callbacks=[mc]).fit(BoringModel())
    with pytest.raises(surge.utils.MisconfigurationError,
                       match=r"You restored a checkpoint with current_epoch=3, but you have set Trainer\(max_epochs=2\)"):
        quiet(tmp_path, max_epochs=2, enable_checkpointing=False).fit(BoringModel(), ckpt_path=mc.last_model_path)
    # at its end exactly: fit has nothing left to do, and says nothing wrong
    trainer = quiet(tmp_path, max_epochs=3, enable_checkpointing=False)
    trainer.fit(BoringModel(), ckpt_path=mc.last_model_path)
    assert trainer.current_epoch == 3
