"""TQDMProgressBar, ModelSummary and LearningRateMonitor."""
from __future__ import annotations

import csv
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.callbacks import LearningRateMonitor, ModelSummary, TQDMProgressBar
from surge.callbacks.model_summary import summarize
from surge.loggers import CSVLogger


def data(n=32):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


class Net(surge.Module):
    def __init__(self, sched="step"):
        super().__init__()
        self.sched = sched
        self.encoder = nn.Linear(4, 10)   # 50 params
        self.head = nn.Linear(10, 1)      # 11 params
        self.frozen = nn.Linear(3, 3)     # 12 params, not trained
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.head(torch.relu(self.encoder(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y), prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        if self.sched == "step":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return [opt], [sched]


def trainer(tmp_path, **kw):
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    kw.setdefault("enable_model_summary", False)
    kw.setdefault("max_epochs", 1)
    return surge.Trainer(default_root_dir=str(tmp_path), **kw)


# ---------------------------------------------------------------------- progress bar
def test_progress_bar_writes_to_stderr_with_metrics(tmp_path, capfd):
    t = trainer(tmp_path, max_epochs=2, callbacks=[TQDMProgressBar(max_refresh_per_second=1e6)])
    assert isinstance(t.progress_bar_callback, TQDMProgressBar)
    t.fit(Net(), data(), data(16))
    out, err = capfd.readouterr()
    assert "Epoch 0" in err and "Epoch 1" in err
    assert "train_loss=" in err and "val_loss=" in err
    assert "4/4" in err
    assert "Epoch 0" not in out


def test_progress_bar_is_default_and_can_be_disabled(tmp_path, capfd):
    t = trainer(tmp_path)
    assert isinstance(t.progress_bar_callback, TQDMProgressBar)
    t = trainer(tmp_path, enable_progress_bar=False)
    assert t.progress_bar_callback is None
    t.fit(Net(), data())
    out, err = capfd.readouterr()
    assert "Epoch 0" not in err


def test_progress_bar_in_validate_and_predict(tmp_path, capfd):
    t = trainer(tmp_path, callbacks=[TQDMProgressBar(leave=True)])
    t.validate(Net(), data(16), verbose=False)
    t.predict(Net(), DataLoader(torch.randn(8, 4), batch_size=4))
    _, err = capfd.readouterr()
    assert "Validation" in err and "Predict" in err


def test_progress_bar_metric_formatting(tmp_path):
    t = trainer(tmp_path)
    t.progress_bar_metrics = {"a": torch.tensor(0.5), "b": torch.tensor(1.23456789), "c": torch.tensor(1e-5),
                              "d": torch.tensor(3.0)}
    assert TQDMProgressBar().get_metrics(t) == {"a": "0.5", "b": "1.2346", "c": "1e-05", "d": "3"}


# ---------------------------------------------------------------------- model summary
def test_model_summary_counts(tmp_path, capsys):
    t = trainer(tmp_path, enable_model_summary=True, enable_progress_bar=False)
    t.fit(Net(), data())
    out = capsys.readouterr().out
    assert "Trainable params" in out
    trainable = next(l for l in out.splitlines() if l.endswith("Trainable params") and "Non" not in l)
    non_trainable = next(l for l in out.splitlines() if l.endswith("Non-trainable params"))
    total = next(l for l in out.splitlines() if l.endswith("Total params"))
    assert trainable.split()[0] == "61"
    assert non_trainable.split()[0] == "12"
    assert total.split()[0] == "73"
    for name, typ, count in (("encoder", "Linear", "50"), ("head", "Linear", "11"), ("frozen", "Linear", "12")):
        row = next(l for l in out.splitlines() if f"| {name} " in l)
        assert typ in row and row.rstrip().endswith(count)


def test_summarize_depth_and_large_counts():
    model = nn.Sequential(nn.Sequential(nn.Linear(1000, 1000)), nn.Linear(10, 1))
    text = summarize(model, max_depth=2)
    assert "| 0.0 " in text  # depth 2 shows the inner Linear
    assert "1.0 M" in text and "Trainable params" in text
    assert "| 0.0 " not in summarize(model, max_depth=1)


def test_model_summary_disabled_prints_nothing(tmp_path, capsys):
    trainer(tmp_path, enable_progress_bar=False).fit(Net(), data())
    assert "Trainable params" not in capsys.readouterr().out
    trainer(tmp_path, enable_progress_bar=False, callbacks=[ModelSummary(max_depth=-1)]).fit(Net(), data())
    assert "Trainable params" not in capsys.readouterr().out


# ---------------------------------------------------------------------- learning-rate monitor
def read_csv(logger):
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def test_lr_monitor_step_interval_matches_scheduler(tmp_path):
    logger = CSVLogger(tmp_path)
    t = trainer(tmp_path, max_epochs=2, logger=logger, log_every_n_steps=1, enable_progress_bar=False,
                callbacks=[LearningRateMonitor(logging_interval="step")])
    t.fit(Net("step"), data())
    rows = [r for r in read_csv(logger) if r.get("lr-SGD")]
    got = {int(r["step"]): float(r["lr-SGD"]) for r in rows}
    # logged before each batch: the lr the optimizer step of that batch uses
    assert got == pytest.approx({s: 0.1 / (1 + s) for s in range(8)})


def test_lr_monitor_epoch_interval_follows_scheduler(tmp_path):
    logger = CSVLogger(tmp_path)
    t = trainer(tmp_path, max_epochs=3, logger=logger, enable_progress_bar=False,
                callbacks=[LearningRateMonitor(log_momentum=True)])
    t.fit(Net("epoch"), data())
    rows = [r for r in read_csv(logger) if r.get("lr-SGD")]
    assert [float(r["lr-SGD"]) for r in rows] == pytest.approx([0.1, 0.05, 0.025])
    assert [int(float(r["epoch"])) for r in rows] == [0, 1, 2]
    assert [float(r["lr-SGD-momentum"]) for r in rows] == pytest.approx([0.9] * 3)


def test_lr_monitor_bad_interval():
    with pytest.raises(surge.utils.MisconfigurationError):
        LearningRateMonitor(logging_interval="batch")


class TwoGroups(Net):
    def configure_optimizers(self):
        first, second = list(self.parameters())[:1], list(self.parameters())[1:]
        adam = torch.optim.Adam([{"params": first, "name": "enc"}, {"params": second}], lr=0.01, weight_decay=0.1)
        sgd = torch.optim.SGD(self.parameters(), lr=0.2)
        return [adam, sgd], [{"scheduler": torch.optim.lr_scheduler.StepLR(adam, 1), "name": "adam_lr"}]

    def training_step(self, batch, batch_idx):
        return super().training_step(batch, batch_idx) if self.automatic_optimization else None


def test_lr_monitor_names_groups_momentum_and_weight_decay_as_lightning(tmp_path):
    logger = CSVLogger(tmp_path)
    monitor = LearningRateMonitor(log_momentum=True, log_weight_decay=True)
    model = TwoGroups()
    model.automatic_optimization = False  # two optimizers, stepped by nobody: only the names matter here
    t = trainer(tmp_path, max_epochs=2, logger=logger, log_every_n_steps=2, enable_progress_bar=False,
                callbacks=[monitor])
    t.fit(model, data())
    assert sorted(monitor.lrs) == ["adam_lr/enc", "adam_lr/pg2", "lr-SGD"]
    assert monitor.lrs["adam_lr/enc"] == [0.01, 0.01]  # the scheduler's interval (epoch): once per epoch
    assert len(monitor.lrs["lr-SGD"]) == 2 + 4  # no scheduler: each epoch start and every 2nd of 4+4 batches
    assert monitor.last_momentum_values == {"adam_lr/enc-momentum": 0.9, "adam_lr/pg2-momentum": 0.9,
                                            "lr-SGD-momentum": 0}
    assert monitor.last_weight_decay_values["adam_lr/enc-weight_decay"] == 0.1
    assert float(t.callback_metrics["lr-SGD"]) == pytest.approx(0.2)  # EarlyStopping could monitor it
    header = read_csv(logger)[0].keys()
    assert {"adam_lr/enc", "adam_lr/pg2-momentum", "lr-SGD-weight_decay"} <= set(header)


def test_lr_monitor_needs_a_logger_and_warns_about_missing_momentum(tmp_path):
    with pytest.raises(surge.utils.MisconfigurationError, match="Trainer` that has no logger"):
        trainer(tmp_path, logger=False, enable_progress_bar=False, callbacks=[LearningRateMonitor()]).fit(Net(), data())

    class Plain(Net):
        def configure_optimizers(self):
            return torch.optim.Adagrad(self.parameters(), lr=0.1)

    with pytest.warns(RuntimeWarning, match="some optimizers do not have momentum"):
        trainer(tmp_path, logger=CSVLogger(tmp_path), max_epochs=1, enable_progress_bar=False,
                callbacks=[LearningRateMonitor(log_momentum=True)]).fit(Plain(), data())


def test_lr_monitor_refuses_duplicate_group_names(tmp_path):
    class Twice(Net):
        def configure_optimizers(self):
            ps = list(self.parameters())
            return torch.optim.SGD([{"params": ps[:1], "name": "x"}, {"params": ps[1:], "name": "x"}], lr=0.1)

    with pytest.raises(surge.utils.MisconfigurationError, match="identical `name` values"):
        trainer(tmp_path, logger=CSVLogger(tmp_path), enable_progress_bar=False,
                callbacks=[LearningRateMonitor()]).fit(Twice(), data())
