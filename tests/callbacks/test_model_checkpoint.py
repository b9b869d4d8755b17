"""ModelCheckpoint: which files it writes, when, under which names, and which it keeps."""
from __future__ import annotations

import os
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.callbacks import ModelCheckpoint
from surge.loggers import CSVLogger

# val_loss by epoch: best (min) epochs are 3 (0.1) then 1 (0.3)
SCORES = [0.9, 0.3, 0.5, 0.1, 0.7, 0.8]


def data(n=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


class Scored(surge.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.step_losses = {}  # the global step the batch's optimizer step makes -> its loss

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.layer(x), y)
        self.step_losses[self.global_step + 1] = loss.item()
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(SCORES[self.current_epoch]))
        self.log("val_acc", torch.tensor(1.0 - SCORES[self.current_epoch]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def run(tmp_path, callbacks=None, max_epochs=2, val=True, **kw):
    kw.setdefault("logger", CSVLogger(tmp_path))
    t = surge.Trainer(default_root_dir=str(tmp_path), max_epochs=max_epochs, callbacks=callbacks,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw)
    t.model = Scored()
    t.fit(t.model, data(), data(16) if val else None)
    return t


def ckpts(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".ckpt"))


def test_default_checkpoint_writes_last_and_one_epoch_file(tmp_path):
    t = run(tmp_path, max_epochs=2)
    cb = t.checkpoint_callback
    folder = os.path.join(t.log_dir, "checkpoints")
    assert cb.dirpath == folder == str(tmp_path / "surge_logs" / "version_0" / "checkpoints")
    assert ckpts(folder) == ["epoch=1-step=8.ckpt", "last.ckpt"]
    assert cb.last_model_path == os.path.join(folder, "last.ckpt")
    assert cb.best_model_path == os.path.join(folder, "epoch=1-step=8.ckpt")
    last = torch.load(cb.last_model_path, weights_only=True)
    assert last["global_step"] == 8 and last["epoch"] == 1


def test_default_checkpoint_without_logger_goes_to_root(tmp_path):
    t = run(tmp_path, max_epochs=1, logger=False)
    assert ckpts(tmp_path / "checkpoints") == ["epoch=0-step=4.ckpt", "last.ckpt"]
    assert t.checkpoint_callback.dirpath == str(tmp_path / "checkpoints")


def test_top_k_keeps_exactly_the_best(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=2)
    run(tmp_path, [cb], max_epochs=6)
    assert ckpts(cb.dirpath) == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt"]
    assert cb.best_model_path == os.path.join(cb.dirpath, "epoch=3-step=16.ckpt")
    assert float(cb.best_model_score) == pytest.approx(0.1)
    assert {os.path.basename(p): s for p, s in cb.best_k_models.items()} == \
        pytest.approx({"epoch=3-step=16.ckpt": 0.1, "epoch=1-step=8.ckpt": 0.3})
    # each kept file records the val_loss it was ranked by
    ck = torch.load(cb.best_model_path, weights_only=True)
    assert ck["epoch"] == 3


def test_top_k_mode_max(tmp_path):
    cb = ModelCheckpoint(monitor="val_acc", mode="max", save_top_k=1)
    run(tmp_path, [cb], max_epochs=5)
    assert ckpts(cb.dirpath) == ["epoch=3-step=16.ckpt"]
    assert float(cb.best_model_score) == pytest.approx(0.9)


def test_save_top_k_minus_one_keeps_all(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=-1)
    run(tmp_path, [cb], max_epochs=4)
    assert ckpts(cb.dirpath) == [f"epoch={e}-step={4 * (e + 1)}.ckpt" for e in range(4)]
    assert len(cb.best_k_models) == 4


def test_save_top_k_zero_with_last_writes_only_last(tmp_path):
    cb = ModelCheckpoint(save_top_k=0, save_last=True)
    run(tmp_path, [cb], max_epochs=2)
    assert ckpts(cb.dirpath) == ["last.ckpt"]
    assert cb.best_model_path == ""


def test_every_n_train_steps_saves_mid_epoch(tmp_path):
    cb = ModelCheckpoint(every_n_train_steps=3, save_top_k=-1)
    run(tmp_path, [cb], max_epochs=3)  # 4 batches per epoch: steps 1..12
    names = ckpts(cb.dirpath)
    assert names == sorted(f"epoch={(s - 1) // 4}-step={s}.ckpt" for s in (3, 6, 9, 12))
    mid = torch.load(os.path.join(cb.dirpath, "epoch=0-step=3.ckpt"), weights_only=True)
    assert mid["global_step"] == 3
    assert mid["trainer_state"]["epoch"] == 0 and mid["trainer_state"]["batch_idx"] == 3


def test_every_n_epochs(tmp_path):
    cb = ModelCheckpoint(every_n_epochs=2, save_top_k=-1)
    run(tmp_path, [cb], max_epochs=5)
    assert ckpts(cb.dirpath) == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt"]


def test_every_n_epochs_without_validation(tmp_path):
    cb = ModelCheckpoint(every_n_epochs=2, save_top_k=-1)
    run(tmp_path, [cb], max_epochs=4, val=False)
    assert ckpts(cb.dirpath) == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt"]


def test_filename_template_and_dirpath(tmp_path):
    target = tmp_path / "elsewhere"
    cb = ModelCheckpoint(dirpath=target, filename="{epoch}-{val_loss:.2f}", monitor="val_loss", save_top_k=2)
    run(tmp_path, [cb], max_epochs=4)
    assert ckpts(target) == ["epoch=1-val_loss=0.30.ckpt", "epoch=3-val_loss=0.10.ckpt"]
    assert not os.path.exists(tmp_path / "surge_logs" / "version_0" / "checkpoints")


def test_filename_without_metric_names(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "c", filename="model-{epoch:02d}-{val_loss:.1f}",
                         auto_insert_metric_name=False, monitor="val_loss")
    run(tmp_path, [cb], max_epochs=2)
    assert ckpts(tmp_path / "c") == ["model-01-0.3.ckpt"]


def test_save_weights_only(tmp_path):
    cb = ModelCheckpoint(save_weights_only=True, save_last=True)
    run(tmp_path, [cb], max_epochs=1)
    for name in ckpts(cb.dirpath):
        ck = torch.load(os.path.join(cb.dirpath, name), weights_only=True)
        assert "optimizer_states" not in ck and "lr_schedulers" not in ck and "trainer_state" not in ck
        assert set(ck["state_dict"]) == {"layer.weight", "layer.bias"}
    with pytest.raises(surge.checkpoint.CheckpointError, match="weights only"):
        run(tmp_path / "again", max_epochs=2).fit(Scored(), data(), ckpt_path=cb.last_model_path)


def test_every_checkpoint_loads_with_weights_only(tmp_path):
    cb = ModelCheckpoint(monitor="val_loss", save_top_k=-1, save_last=True, every_n_epochs=1)
    run(tmp_path, [cb], max_epochs=2)
    for name in ckpts(cb.dirpath):
        ck = torch.load(os.path.join(cb.dirpath, name), weights_only=True)
        assert ck["surge_format_version"] == 1
        key = next(k for k in ck["callbacks"] if k.startswith("ModelCheckpoint"))
        # the checkpoint's own callback state already lists the file it was written to
        if name != "last.ckpt":
            assert os.path.join(cb.dirpath, name) in ck["callbacks"][key]["best_k_models"]
        else:
            assert ck["callbacks"][key]["last_model_path"] == cb.last_model_path


def test_missing_monitor_warns_and_saves_only_last(tmp_path):
    cb = ModelCheckpoint(monitor="nope", save_last=True)
    with pytest.warns(UserWarning, match="nope"):
        run(tmp_path, [cb], max_epochs=1)
    assert ckpts(cb.dirpath) == ["last.ckpt"]


def test_top_k_on_a_step_metric_ranks_by_that_steps_value(tmp_path):
    cb = ModelCheckpoint(every_n_train_steps=1, save_top_k=2, monitor="train_loss", save_last=True)
    t = run(tmp_path, [cb], max_epochs=2)
    losses = t.model.step_losses
    best_two = sorted(losses, key=losses.get)[:2]
    assert sorted(cb.best_k_models.values()) == pytest.approx(sorted(losses[s] for s in best_two))
    assert sorted(int(re.search(r"step=(\d+)", p).group(1)) for p in cb.best_k_models) == sorted(best_two)
    assert not [f for f in os.listdir(cb.dirpath) if f.startswith(".")]
    assert len(ckpts(cb.dirpath)) == 3


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "best"}, "mode"),
    ({"save_top_k": -2}, "save_top_k"),
    ({"every_n_epochs": 1, "every_n_train_steps": 2}, "not both"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(surge.utils.MisconfigurationError, match=match):
        ModelCheckpoint(**kwargs)


def test_checkpoint_callback_with_checkpointing_disabled_is_an_error(tmp_path):
    with pytest.raises(surge.utils.MisconfigurationError, match="enable_checkpointing"):
        surge.Trainer(default_root_dir=str(tmp_path), enable_checkpointing=False, callbacks=[ModelCheckpoint()])


def test_fast_dev_run_writes_no_checkpoint(tmp_path):
    t = surge.Trainer(default_root_dir=str(tmp_path), fast_dev_run=True, enable_progress_bar=False,
                      enable_model_summary=False)
    t.fit(Scored(), data(), data(16))
    assert not any(re.search(r"\.ckpt$", f) for _, _, files in os.walk(tmp_path) for f in files)
