"""The demos: ToyModel, the digits demo, and the ``surge`` command."""
from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
import torch

import surge
from surge.demos.toy import ToyDataModule, ToyModel, ToyDataset

SURGE = os.path.join(os.path.dirname(sys.executable), "surge")


def test_random_dataset_is_fixed_by_seed():
    a, b = ToyDataset(8, 10, seed=3), ToyDataset(8, 10, seed=3)
    assert len(a) == 10 and a[0].shape == (8,)
    assert torch.equal(a.data, b.data)
    assert not torch.equal(a.data, ToyDataset(8, 10, seed=4).data)


def test_boring_model_all_stages(tmp_path):
    model = ToyModel()
    t = surge.Trainer(default_root_dir=str(tmp_path), max_epochs=2, enable_progress_bar=False,
                      enable_model_summary=False)
    t.fit(model)
    assert t.global_step == 16 and t.current_epoch == 2
    assert "train_loss" in t.callback_metrics and "val_loss" in t.callback_metrics
    val = t.validate(model, verbose=False)
    test = t.test(model, verbose=False)
    assert set(val[0]) == {"val_loss"} and set(test[0]) == {"test_loss"}
    preds = t.predict(model)
    assert len(preds) == 2 and preds[0].shape == (8, 2)
    assert glob.glob(str(tmp_path / "**" / "*.ckpt"), recursive=True)


def test_boring_model_learns(tmp_path):
    model = ToyModel()
    t = surge.Trainer(default_root_dir=str(tmp_path), max_epochs=3, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    before = t.validate(model, verbose=False)[0]["val_loss"]
    t.fit(model)
    after = t.validate(model, verbose=False)[0]["val_loss"]
    assert after < before / 2


def test_boring_datamodule(tmp_path):
    t = surge.Trainer(default_root_dir=str(tmp_path), max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    dm = ToyDataModule()
    model = ToyModel()
    t.fit(model, datamodule=dm)
    assert t.global_step == 8
    assert len(t.predict(model, datamodule=dm)) == 2
    assert "test_loss" in t.test(model, datamodule=dm, verbose=False)[0]


def test_digits_demo_reaches_high_accuracy(tmp_path, capsys, monkeypatch):
    pytest.importorskip("sklearn")
    pytest.importorskip("tensorboard")
    for name in ("SURGE_GLOBAL_SEED", "SURGE_SEED_WORKERS"):  # seed_everything sets them: restore afterwards
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep this process's thread count
    from surge.demos import digits

    # One process: without a GPU the demo's default is DDP, which re-runs the command (here: pytest).
    results = digits.main(["--max-epochs", "10", "--devices", "1", "--no-progress-bar", "--root-dir", str(tmp_path)])
    assert results["test_acc"] > 0.95
    out = capsys.readouterr().out
    assert "test accuracy:" in out
    version = tmp_path / "surge_logs" / "version_0"
    assert glob.glob(str(version / "events.out.tfevents.*"))
    names = sorted(os.listdir(version / "checkpoints"))
    assert "last.ckpt" in names and any(n.startswith("epoch=") for n in names)
    best = next(n for n in names if n.startswith("epoch="))
    model = digits.DigitsClassifier.load_from_checkpoint(version / "checkpoints" / best)
    assert model.hparams.channels == 32


def test_surge_command_help():
    assert os.path.exists(SURGE), SURGE
    top = subprocess.run([SURGE, "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and "demo" in top.stdout
    demo = subprocess.run([SURGE, "demo", "--help"], capture_output=True, text=True, timeout=60)
    assert demo.returncode == 0, demo.stderr
    assert "--max-epochs" in demo.stdout and "usage: surge demo" in demo.stdout


def test_surge_command_unknown():
    bad = subprocess.run([SURGE, "frobnicate"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown command" in bad.stderr
