"""Checkpoint files, resuming fit, load_from_checkpoint and atomic writes."""
from __future__ import annotations

import csv
import glob
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.callbacks import EarlyStopping, ModelCheckpoint
from surge.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from surge.loggers import CSVLogger


def make_data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def loader(n=32, seed=0):
    return DataLoader(make_data(n, seed), batch_size=8, shuffle=False)


class Reg(surge.Module):
    def __init__(self, hidden: int = 8, lr: float = 0.05, use_scheduler: bool = True):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.losses = []  # (epoch, global_step, loss)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.losses.append((self.current_epoch, self.global_step, loss.item()))
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.mse_loss(self(x), y))

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        if not self.hparams.use_scheduler:
            return opt
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]


def trainer(tmp_path, **kw):
    kw.setdefault("max_epochs", 2)
    kw.setdefault("enable_progress_bar", False)
    kw.setdefault("enable_model_summary", False)
    kw.setdefault("logger", CSVLogger(tmp_path))
    return surge.Trainer(default_root_dir=str(tmp_path), **kw)


def fit(tmp_path, model=None, **kw):
    model = model or Reg()
    t = trainer(tmp_path, **kw)
    t.fit(model, loader(), loader(16, seed=1))
    return t, model


# ---------------------------------------------------------------------- file format
def test_checkpoint_loads_with_weights_only_and_has_expected_keys(tmp_path):
    t, model = fit(tmp_path)
    path = t.checkpoint_callback.last_model_path
    ckpt = torch.load(path, weights_only=True)
    for key in ("state_dict", "hyper_parameters", "optimizer_states", "lr_schedulers", "trainer_state",
                "epoch", "global_step", "callbacks", "loggers"):
        assert key in ckpt, key
    assert ckpt["global_step"] == 8
    assert ckpt["hyper_parameters"] == {"hidden": 8, "lr": 0.05, "use_scheduler": True}
    assert ckpt["trainer_state"]["epoch"] == 2  # saved after the epoch ended: a resume starts epoch 2
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["state_dict"][k], v)


# ---------------------------------------------------------------------- resume
def test_resume_last_matches_uninterrupted_run(tmp_path):
    torch.manual_seed(0)
    full = Reg()
    fit(tmp_path / "full", full, max_epochs=4)

    torch.manual_seed(0)
    first = Reg()
    t1, _ = fit(tmp_path / "split", first, max_epochs=2)
    saved = torch.load(t1.checkpoint_callback.last_model_path, weights_only=True)

    torch.manual_seed(123)  # other initial weights: the checkpoint must overwrite them
    second = Reg()
    t2 = trainer(tmp_path / "split", max_epochs=4, logger=CSVLogger(tmp_path / "split"))
    seen = {}

    class Probe(surge.Callback):
        def on_train_start(self, trainer, module):
            opt = trainer.optimizers[0]
            seen["epoch"], seen["step"] = trainer.current_epoch, trainer.global_step
            seen["exp_avg"] = [opt.state[p]["exp_avg"].clone() for p in module.parameters()]
            seen["last_epoch"] = trainer.lr_scheduler_configs[0].scheduler.last_epoch
            seen["lr"] = opt.param_groups[0]["lr"]

    t2.callbacks.insert(0, Probe())
    t2.fit(second, loader(), loader(16, seed=1), ckpt_path="last")

    assert seen["epoch"] == 2 and seen["step"] == saved["global_step"] == 8
    saved_exp_avg = [saved["optimizer_states"][0]["state"][i]["exp_avg"] for i in range(len(seen["exp_avg"]))]
    for a, b in zip(seen["exp_avg"], saved_exp_avg):
        assert torch.equal(a, b)
    assert seen["last_epoch"] == 2
    assert seen["lr"] == pytest.approx(0.05 * 0.25)
    assert t2.current_epoch == 4 and t2.global_step == 16

    resumed = [(e, s, l) for e, s, l in second.losses]
    assert [e for e, _, _ in resumed] == [2] * 4 + [3] * 4
    expected = [x for x in full.losses if x[0] >= 2]
    assert [s for _, s, _ in resumed] == [s for _, s, _ in expected]
    assert [l for _, _, l in resumed] == pytest.approx([l for _, _, l in expected], rel=1e-6, abs=1e-7)
    for a, b in zip(full.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_resume_last_without_checkpoint_warns_and_starts_fresh(tmp_path):
    t = trainer(tmp_path, max_epochs=1)
    with pytest.warns(UserWarning, match="found no checkpoint"):
        t.fit(Reg(), loader(), ckpt_path="last")
    assert t.current_epoch == 1 and t.global_step == 4
    assert t.ckpt_path is None


def test_resume_from_explicit_path(tmp_path):
    t1, _ = fit(tmp_path, max_epochs=1)
    path = t1.checkpoint_callback.last_model_path
    t2 = trainer(tmp_path / "b", max_epochs=2)
    t2.fit(Reg(), loader(), ckpt_path=path)
    assert t2.ckpt_path == path
    assert t2.global_step == 8 and t2.current_epoch == 2


def test_test_with_ckpt_best_uses_best_checkpoint(tmp_path):
    ckpt = ModelCheckpoint(monitor="val_loss", mode="min", save_top_k=1)
    t = trainer(tmp_path, max_epochs=3, callbacks=[ckpt])
    model = Reg()
    t.fit(model, loader(), loader(16, seed=1))
    best = ckpt.best_model_path
    assert os.path.isfile(best)
    with torch.no_grad():  # move the weights away: test() must reload the best ones
        for p in model.parameters():
            p.add_(10.0)
    res = t.test(model, loader(16, seed=1), ckpt_path="best", verbose=False)
    assert t.ckpt_path == best
    assert res[0]["test_loss"] == pytest.approx(float(ckpt.best_model_score), rel=1e-5)


def test_ckpt_best_without_fit_is_a_clear_error(tmp_path):
    t = trainer(tmp_path)
    with pytest.raises(surge.utils.MisconfigurationError, match="best"):
        t.test(Reg(), loader(), ckpt_path="best")


def test_validate_with_ckpt_path(tmp_path):
    t1, model = fit(tmp_path, max_epochs=2)
    path = t1.checkpoint_callback.last_model_path
    expected = t1.validate(model, loader(16, seed=1), verbose=False)[0]["val_loss"]
    t2 = trainer(tmp_path / "other")
    res = t2.validate(Reg(), loader(16, seed=1), ckpt_path=path, verbose=False)
    assert res[0]["val_loss"] == pytest.approx(expected, rel=1e-6)


def test_weights_only_checkpoint_cannot_resume_fit(tmp_path):
    cb = ModelCheckpoint(save_weights_only=True, save_last=True)
    t1, _ = fit(tmp_path, max_epochs=1, callbacks=[cb])
    ckpt = torch.load(cb.last_model_path, weights_only=True)
    assert "optimizer_states" not in ckpt and "state_dict" in ckpt
    t2 = trainer(tmp_path / "b", max_epochs=2)
    with pytest.raises(CheckpointError, match="weights only"):
        t2.fit(Reg(), loader(), ckpt_path=cb.last_model_path)


def test_callback_state_restored_on_resume(tmp_path):
    mc = ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True)
    es = EarlyStopping("val_loss", patience=100, min_delta=1e9)  # never "improves": wait_count grows
    fit(tmp_path, max_epochs=3, callbacks=[mc, es])
    assert es.wait_count == 3 - 1  # the first check sets the best score
    best_k, best_path = dict(mc.best_k_models), mc.best_model_path
    assert len(best_k) == 2

    mc2 = ModelCheckpoint(monitor="val_loss", save_top_k=2, save_last=True)
    es2 = EarlyStopping("val_loss", patience=100, min_delta=1e9)
    restored = {}

    class Probe(surge.Callback):
        def on_train_start(self, trainer, module):
            restored.update(best_k=dict(mc2.best_k_models), best=mc2.best_model_path, wait=es2.wait_count)

    t2 = trainer(tmp_path, max_epochs=4, callbacks=[Probe(), mc2, es2], logger=CSVLogger(tmp_path))
    t2.fit(Reg(), loader(), loader(16, seed=1), ckpt_path="last")
    assert restored["wait"] == 2
    assert restored["best_k"] == best_k and restored["best"] == best_path
    assert es2.wait_count == 3
    assert len(mc2.best_k_models) == 2
    files = glob.glob(os.path.join(mc2.dirpath, "epoch=*.ckpt"))
    assert sorted(files) == sorted(mc2.best_k_models)


def test_csv_logger_continues_same_version_without_duplicate_steps(tmp_path):
    def run(epochs, ckpt_path=None):
        logger = CSVLogger(tmp_path)
        t = trainer(tmp_path, max_epochs=epochs, logger=logger, log_every_n_steps=1)
        t.fit(Reg(), loader(), loader(16, seed=1), ckpt_path=ckpt_path)
        return logger

    first = run(2)
    second = run(4, ckpt_path="last")
    assert second.version == first.version == 0
    assert sorted(os.listdir(tmp_path / "surge_logs")) == ["version_0"]
    with open(os.path.join(second.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    train_steps = [int(r["step"]) for r in rows if r.get("train_loss")]
    assert len(train_steps) == len(set(train_steps)) == 16
    val_epochs = [int(float(r["epoch"])) for r in rows if r.get("val_loss")]
    assert val_epochs == [0, 1, 2, 3]


# ---------------------------------------------------------------------- load_from_checkpoint
def test_load_from_checkpoint_rebuilds_from_hparams(tmp_path):
    t, model = fit(tmp_path, Reg(hidden=6, lr=0.01), max_epochs=1)
    path = t.checkpoint_callback.last_model_path
    loaded = Reg.load_from_checkpoint(path)
    assert loaded.hparams.hidden == 6 and loaded.hparams.lr == 0.01
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    override = Reg.load_from_checkpoint(path, lr=0.5)
    assert override.hparams.lr == 0.5 and override.hparams.hidden == 6


def test_load_from_checkpoint_of_other_model_lists_mismatches(tmp_path):
    t, _ = fit(tmp_path, Reg(hidden=6), max_epochs=1)
    path = t.checkpoint_callback.last_model_path
    with pytest.raises(CheckpointError) as info:
        Reg.load_from_checkpoint(path, hidden=5)
    msg = str(info.value)
    assert "net.0.weight" in msg and "(6, 4)" in msg and "(5, 4)" in msg
    assert "net.2.weight" in msg


def test_load_from_checkpoint_missing_and_unexpected_keys(tmp_path):
    class Wider(Reg):
        def __init__(self, hidden: int = 8, lr: float = 0.05, use_scheduler: bool = True):
            super().__init__(hidden, lr, use_scheduler)
            self.extra = nn.Linear(2, 2)

    t, model = fit(tmp_path, Reg(), max_epochs=1)
    path = t.checkpoint_callback.last_model_path
    with pytest.raises(CheckpointError, match=r"missing keys.*extra\.weight"):
        Wider.load_from_checkpoint(path)
    loaded = Wider.load_from_checkpoint(path, strict=False)
    assert torch.equal(loaded.net[0].weight, model.net[0].weight)


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _Opaque()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="arbitrary"):
        Reg.load_from_checkpoint(path)


class _Opaque:
    def __init__(self):
        self.value = 1


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="not a surge checkpoint"):
        load_checkpoint(foreign)


# ---------------------------------------------------------------------- atomic writes
def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpts" / "model.ckpt"
    save_checkpoint({"state_dict": {"w": torch.ones(3)}}, str(path))
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, str(path))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["model.ckpt"]
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))


def test_save_checkpoint_interrupt_leaves_no_new_file(tmp_path, monkeypatch):
    path = tmp_path / "new.ckpt"

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"state_dict": {}}, str(path))
    assert os.listdir(tmp_path) == []


class Plateau(Reg):
    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.5)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5, threshold=10.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}


def test_resume_restores_plateau_scheduler_like_uninterrupted_run(tmp_path):
    # threshold=10: no epoch counts as an improvement, so the lr halves after every epoch
    torch.manual_seed(0)
    full = Plateau()
    t_full, _ = fit(tmp_path / "full", full, max_epochs=4)
    torch.manual_seed(0)
    fit(tmp_path / "split", Plateau(), max_epochs=2)
    resumed = Plateau()
    t2 = trainer(tmp_path / "split", max_epochs=4, logger=CSVLogger(tmp_path / "split"))
    t2.fit(resumed, loader(), loader(16, seed=1), ckpt_path="last")
    a = t_full.lr_scheduler_configs[0].scheduler.state_dict()
    b = t2.lr_scheduler_configs[0].scheduler.state_dict()
    assert t2.optimizers[0].param_groups[0]["lr"] == t_full.optimizers[0].param_groups[0]["lr"] == 0.5 / 16
    assert a["last_epoch"] == b["last_epoch"] == 4
    assert a["num_bad_epochs"] == b["num_bad_epochs"] and a["best"] == pytest.approx(b["best"])
    assert [l for *_, l in resumed.losses] == pytest.approx([l for e, _, l in full.losses if e >= 2], rel=1e-6)


def test_ckpt_path_last_outside_fit_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(surge.utils.MisconfigurationError, match="last"):
        trainer(tmp_path).validate(Reg(), loader(), ckpt_path="last")


def test_trainer_save_checkpoint_after_fit_resumes(tmp_path):
    t1, model = fit(tmp_path, max_epochs=2)
    path = str(tmp_path / "manual.ckpt")
    t1.save_checkpoint(path)
    ckpt = load_checkpoint(path)
    assert ckpt["trainer_state"]["epoch"] == 2 and ckpt["global_step"] == 8
    assert ckpt["lr_schedulers"][0]["last_epoch"] == 2
    t2 = trainer(tmp_path / "b", max_epochs=3)
    resumed = Reg()
    t2.fit(resumed, loader(), ckpt_path=path)
    assert t2.global_step == 12 and [e for e, *_ in resumed.losses] == [2] * 4


def test_weights_only_checkpoint_loads_into_module(tmp_path):
    cb = ModelCheckpoint(save_weights_only=True)
    _, model = fit(tmp_path, Reg(hidden=3), max_epochs=1, callbacks=[cb])
    loaded = Reg.load_from_checkpoint(cb.best_model_path)
    assert loaded.hparams.hidden == 3
    assert torch.equal(loaded.net[0].weight, model.net[0].weight)


def test_resume_from_mid_epoch_checkpoint_continues_at_that_step(tmp_path):
    torch.manual_seed(0)
    full = Reg(use_scheduler=False)
    fit(tmp_path / "full", full, max_epochs=3)
    torch.manual_seed(0)
    cb = ModelCheckpoint(every_n_train_steps=6, save_top_k=-1)
    fit(tmp_path / "split", Reg(use_scheduler=False), max_epochs=2, callbacks=[cb])
    mid = os.path.join(cb.dirpath, "epoch=1-step=6.ckpt")
    resumed = Reg(use_scheduler=False)
    t2 = trainer(tmp_path / "split2", max_epochs=3)
    t2.fit(resumed, loader(), loader(16, seed=1), ckpt_path=mid)
    assert t2.global_step == 12
    assert [(e, s) for e, s, _ in resumed.losses] == [(1, 6), (1, 7)] + [(2, s) for s in range(8, 12)]
    expected = [l for e, s, l in full.losses if s >= 6]
    assert [l for *_, l in resumed.losses] == pytest.approx(expected, rel=1e-6, abs=1e-7)
