"""self.log: defaults per hook, reductions, where values end up, and the errors for misuse."""
import csv
import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.demos.toy import ToyModel, ToyDataset
from surge.loggers import CSVLogger
from surge.utils import SurgeError


def make_trainer(tmp_path, **kwargs):
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("enable_model_summary", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("logger", False)
    kwargs.setdefault("num_sanity_val_steps", 0)
    kwargs.setdefault("accelerator", "cpu")
    kwargs.setdefault("max_epochs", 1)
    return surge.Trainer(default_root_dir=tmp_path, **kwargs)


class Logs(ToyModel):
    """Logs what ``train_log`` / ``val_log`` say: functions (module, batch, batch_idx) -> None."""

    def __init__(self, train_log=None, val_log=None, **kwargs):
        super().__init__(**kwargs)
        self.train_log, self.val_log = train_log, val_log

    def training_step(self, batch, batch_idx):
        if self.train_log:
            self.train_log(self, batch, batch_idx)
        return self.loss(batch)

    def validation_step(self, batch, batch_idx, *rest):
        if self.val_log:
            self.val_log(self, batch, batch_idx, *rest)

    def test_step(self, batch, batch_idx):
        if self.val_log:
            self.val_log(self, batch, batch_idx)


def csv_rows(logger):
    with open(os.path.join(logger.log_dir, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- defaults per hook
def test_training_step_defaults_to_on_step(tmp_path):
    model = Logs(train_log=lambda m, b, i: m.log("x", float(i)))
    trainer = make_trainer(tmp_path, limit_train_batches=4, limit_val_batches=0, log_every_n_steps=2)
    trainer.fit(model)
    assert float(trainer.callback_metrics["x"]) == 3.0  # the last step's value, no epoch reduction
    assert float(trainer.logged_metrics["x"]) == 3.0
    assert "x_step" not in trainer.callback_metrics and "x_epoch" not in trainer.callback_metrics


def test_training_step_on_step_and_on_epoch(tmp_path):
    model = Logs(train_log=lambda m, b, i: m.log("x", float(i), on_step=True, on_epoch=True))
    logger = CSVLogger(tmp_path)
    trainer = make_trainer(tmp_path, limit_train_batches=4, limit_val_batches=0, logger=logger, log_every_n_steps=1)
    trainer.fit(model)
    cm = trainer.callback_metrics
    assert float(cm["x_step"]) == 3.0
    assert float(cm["x_epoch"]) == 1.5
    assert float(cm["x"]) == 1.5  # the plain name holds the epoch value once the epoch ends
    assert float(trainer.logged_metrics["x_step"]) == 3.0
    assert float(trainer.logged_metrics["x_epoch"]) == 1.5
    assert "x" not in trainer.logged_metrics
    rows = csv_rows(logger)
    assert [float(r["x_step"]) for r in rows if r["x_step"]] == [0.0, 1.0, 2.0, 3.0]
    assert [float(r["x_epoch"]) for r in rows if r["x_epoch"]] == [1.5]


def test_training_step_on_epoch_only(tmp_path):
    model = Logs(train_log=lambda m, b, i: m.log("x", float(i), on_step=False, on_epoch=True))
    trainer = make_trainer(tmp_path, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(model)
    assert float(trainer.callback_metrics["x"]) == 1.5
    assert float(trainer.logged_metrics["x"]) == 1.5
    assert "x_epoch" not in trainer.callback_metrics


def test_validation_step_defaults_to_on_epoch(tmp_path):
    model = Logs(val_log=lambda m, b, i: m.log("v", float(i)))
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=4)
    trainer.fit(model)
    assert float(trainer.callback_metrics["v"]) == 1.5
    assert float(trainer.logged_metrics["v"]) == 1.5
    assert "v_epoch" not in trainer.callback_metrics and "v_step" not in trainer.callback_metrics


def test_validation_step_on_step_and_on_epoch(tmp_path):
    def val_log(m, b, i):
        m.log("v", float(i), on_step=True, on_epoch=True, prog_bar=True)
        m.log("w", float(i), on_step=True, on_epoch=False)

    seen = []

    class Read(surge.Callback):
        def on_validation_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            seen.append(sorted(trainer.callback_metrics))

    logger = CSVLogger(tmp_path)
    model = Logs(val_log=val_log)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=4, logger=logger, callbacks=[Read()])
    trainer.fit(model)
    cm = trainer.callback_metrics
    assert float(cm["v_epoch"]) == 1.5
    assert float(cm["v"]) == 1.5
    assert float(cm["v_step"]) == 3.0
    assert float(cm["w"]) == 3.0  # on_step only: not dropped
    assert float(trainer.progress_bar_metrics["v_step"]) == 3.0
    assert float(trainer.logged_metrics["v_epoch"]) == 1.5
    assert seen[-1] == ["v_step", "w"]
    rows = csv_rows(logger)
    assert [float(r["v_step"]) for r in rows if r.get("v_step")] == [0.0, 1.0, 2.0, 3.0]
    assert [float(r["w"]) for r in rows if r.get("w")] == [0.0, 1.0, 2.0, 3.0]
    assert [float(r["v_epoch"]) for r in rows if r.get("v_epoch")] == [1.5]


# ---------------------------------------------------------------- reductions
def test_mean_is_weighted_by_batch_size(tmp_path):
    # 10 samples in batches of 4: sizes 4, 4, 2; each batch logs its own index
    data = DataLoader(ToyDataset(32, 10), batch_size=4)
    model = Logs(train_log=lambda m, b, i: m.log("t", float(i), on_epoch=True),
                 val_log=lambda m, b, i: m.log("v", float(i)))
    trainer = make_trainer(tmp_path)
    trainer.fit(model, train_dataloaders=data, val_dataloaders=data)
    expected = (0 * 4 + 1 * 4 + 2 * 2) / 10
    assert float(trainer.callback_metrics["t_epoch"]) == pytest.approx(expected)
    assert float(trainer.callback_metrics["v"]) == pytest.approx(expected)


def test_mean_with_explicit_batch_size(tmp_path):
    sizes = [1, 3]
    model = Logs(val_log=lambda m, b, i: m.log("v", float(i), batch_size=sizes[i]))
    trainer = make_trainer(tmp_path, limit_val_batches=2)
    trainer.validate(model, verbose=False)
    assert float(trainer.callback_metrics["v"]) == pytest.approx(0.75)


def test_batch_size_from_a_tuple_batch(tmp_path):
    data = DataLoader(TensorDataset(torch.randn(10, 32), torch.randn(10)), batch_size=4)

    class TupleLogs(ToyModel):
        def validation_step(self, batch, batch_idx):
            self.log("v", float(batch_idx))

    trainer = make_trainer(tmp_path)
    trainer.validate(TupleLogs(), dataloaders=data, verbose=False)
    assert float(trainer.callback_metrics["v"]) == pytest.approx(0.8)


@pytest.mark.parametrize("reduce_fx, expected", [("sum", 6.0), ("max", 3.0), ("min", 0.0), ("mean", 1.5),
                                                  (torch.sum, 6.0), (torch.max, 3.0), ("avg", 1.5)])
def test_reduce_fx(tmp_path, reduce_fx, expected):
    model = Logs(val_log=lambda m, b, i: m.log("v", float(i), reduce_fx=reduce_fx),
                 train_log=lambda m, b, i: m.log("t", float(i), reduce_fx=reduce_fx, on_epoch=True))
    trainer = make_trainer(tmp_path, limit_val_batches=4, limit_train_batches=4)
    trainer.fit(model)
    assert float(trainer.callback_metrics["v"]) == expected
    assert float(trainer.callback_metrics["t_epoch"]) == expected


def test_bad_reduce_fx(tmp_path):
    model = Logs(val_log=lambda m, b, i: m.log("v", 1.0, reduce_fx="median"))
    with pytest.raises(SurgeError, match=r"self.log\('v'\): reduce_fx must be one of 'mean', 'sum', 'max', 'min'.*'median'"):
        make_trainer(tmp_path, limit_val_batches=1).validate(model, verbose=False)


def test_epoch_values_reset_every_epoch(tmp_path):
    model = Logs(train_log=lambda m, b, i: m.log("e", float(m.current_epoch), on_step=False, on_epoch=True,
                                                 reduce_fx="sum"))
    seen = []

    class Read(surge.Callback):
        def on_train_epoch_end(self, trainer, module):
            seen.append(float(trainer.callback_metrics["e"]))

    Read.reads_epoch_metrics = True
    trainer = make_trainer(tmp_path, max_epochs=3, limit_train_batches=2, limit_val_batches=0, callbacks=[Read()])
    trainer.fit(model)
    assert seen == [0.0, 2.0, 4.0]


# ---------------------------------------------------------------- where values go
def test_log_dict(tmp_path):
    model = Logs(val_log=lambda m, b, i: m.log_dict({"a": float(i), "b": torch.tensor(2.0 * i)}, reduce_fx="max",
                                                    prog_bar=True))
    trainer = make_trainer(tmp_path, limit_val_batches=3)
    out = trainer.validate(model, verbose=False)
    assert out == [{"a": 2.0, "b": 4.0}]
    assert set(trainer.progress_bar_metrics) == {"a", "b"}


def test_log_dict_rejects_non_mapping(tmp_path):
    model = Logs(val_log=lambda m, b, i: m.log_dict([("a", 1.0)]))
    with pytest.raises(TypeError, match=r"log_dict expects a mapping of name -> value, got list"):
        make_trainer(tmp_path, limit_val_batches=1).validate(model, verbose=False)


def test_prog_bar_metrics(tmp_path):
    def train_log(m, b, i):
        m.log("shown", float(i), prog_bar=True)
        m.log("both", float(i), prog_bar=True, on_epoch=True)
        m.log("hidden", float(i))

    model = Logs(train_log=train_log, val_log=lambda m, b, i: m.log("val_shown", 1.0, prog_bar=True))
    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model)
    pbar = trainer.progress_bar_metrics
    assert set(pbar) == {"shown", "both_step", "both_epoch", "val_shown"}
    assert float(pbar["shown"]) == 1.0
    assert float(pbar["both_epoch"]) == 0.5


def test_logger_false_keeps_metric_out_of_logger(tmp_path):
    def train_log(m, b, i):
        m.log("secret", float(i), logger=False)
        m.log("public", float(i))

    logger = CSVLogger(tmp_path)
    model = Logs(train_log=train_log,
                 val_log=lambda m, b, i: m.log("val_secret", 5.0, logger=False))
    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1, logger=logger, log_every_n_steps=1)
    trainer.fit(model)
    assert float(trainer.callback_metrics["secret"]) == 1.0
    assert float(trainer.callback_metrics["val_secret"]) == 5.0
    assert "secret" not in trainer.logged_metrics and "val_secret" not in trainer.logged_metrics
    assert "public" in trainer.logged_metrics
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        header = f.readline()
    assert "secret" not in header and "public" in header


def test_logging_from_epoch_end_hooks(tmp_path):
    class EpochEnd(ToyModel):
        def on_train_epoch_end(self):
            self.log("train_end", float(self.current_epoch) + 10)

        def on_validation_epoch_end(self):
            self.log("val_end", 7.0, prog_bar=True)

    logger = CSVLogger(tmp_path)
    trainer = make_trainer(tmp_path, max_epochs=2, limit_train_batches=1, limit_val_batches=1, logger=logger)
    trainer.fit(EpochEnd())
    assert float(trainer.callback_metrics["train_end"]) == 11.0
    assert float(trainer.callback_metrics["val_end"]) == 7.0
    assert float(trainer.progress_bar_metrics["val_end"]) == 7.0
    rows = csv_rows(logger)
    assert [float(r["train_end"]) for r in rows if r.get("train_end")] == [10.0, 11.0]


def test_early_stopping_sees_metric_logged_in_module_epoch_end(tmp_path):
    class EpochEnd(ToyModel):
        def on_train_epoch_end(self):
            self.log("score", 1.0)

    stop = surge.EarlyStopping("score", patience=1, check_on_train_epoch_end=True)
    trainer = make_trainer(tmp_path, max_epochs=10, limit_train_batches=1, limit_val_batches=0, callbacks=[stop])
    trainer.fit(EpochEnd())
    assert trainer.current_epoch == 2


def test_same_key_different_options_raises(tmp_path):
    def train_log(m, b, i):
        m.log("x", 1.0, on_epoch=(i == 0))

    model = Logs(train_log=train_log)
    with pytest.raises(SurgeError, match=r"self.log\('x'\) was called with on_step=True, on_epoch=False.*"
                                         r"earlier in this train epoch with on_step=True, on_epoch=True"):
        make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=0).fit(model)


def test_same_key_different_reduce_fx_raises(tmp_path):
    model = Logs(val_log=lambda m, b, i: m.log("v", 1.0, reduce_fx="max" if i else "min"))
    with pytest.raises(SurgeError, match=r"reduce_fx='max'.*reduce_fx='min'; use the same options every time"):
        make_trainer(tmp_path, limit_val_batches=2).validate(model, verbose=False)


@pytest.mark.parametrize("value, message", [
    ("high", r"self.log\('x'\) needs a number or a one-element tensor, got str"),
    (torch.ones(3), r"self.log\('x'\) needs a single number, got a tensor of shape \(3,\)"),
    (None, r"got NoneType"),
])
def test_bad_values(tmp_path, value, message):
    model = Logs(val_log=lambda m, b, i: m.log("x", value))
    with pytest.raises(SurgeError, match=message):
        make_trainer(tmp_path, limit_val_batches=1).validate(model, verbose=False)


def test_logging_where_it_is_not_allowed(tmp_path):
    class FitStart(ToyModel):
        def on_fit_start(self):
            self.log("x", 1.0)

    with pytest.raises(SurgeError, match=r"self.log\('x'\) cannot be called from on_fit_start\(\)"):
        make_trainer(tmp_path).fit(FitStart())


def test_on_step_in_eval_epoch_end_raises(tmp_path):
    class Bad(ToyModel):
        def on_validation_epoch_end(self):
            self.log("x", 1.0, on_step=True)

    with pytest.raises(SurgeError, match=r"on_step=True\) cannot be used in on_validation_epoch_end"):
        make_trainer(tmp_path, limit_val_batches=1).validate(Bad(), verbose=False)


# ---------------------------------------------------------------- return values and dataloaders
def test_validate_and_test_return_epoch_metrics_as_floats(tmp_path):
    model = Logs(val_log=lambda m, b, i: (m.log("v", torch.tensor(float(i))), m.log("w", i, reduce_fx="sum")))
    trainer = make_trainer(tmp_path, limit_val_batches=4, limit_test_batches=2)
    out = trainer.validate(model, verbose=False)
    assert out == [{"v": 1.5, "w": 6.0}]
    assert all(type(v) is float for v in out[0].values())
    out = trainer.test(model, verbose=False)
    assert out == [{"v": 0.5, "w": 1.0}]
    assert all(type(v) is float for v in out[0].values())


def test_test_prints_a_table(tmp_path, capsys):
    model = Logs(val_log=lambda m, b, i: m.log("test_metric", 0.25))
    make_trainer(tmp_path, limit_test_batches=1).test(model)
    out = capsys.readouterr().out
    assert "test_metric" in out and "0.25" in out


def test_multiple_val_dataloaders_get_suffixes(tmp_path):
    loaders = [DataLoader(ToyDataset(32, 16), batch_size=8), DataLoader(ToyDataset(32, 8), batch_size=8)]

    def val_log(m, b, i, dl_idx):
        m.log("v", float(dl_idx + 1))
        m.log("shared", 3.0, add_dataloader_idx=False)

    model = Logs(val_log=val_log)
    trainer = make_trainer(tmp_path)
    out = trainer.validate(model, dataloaders=loaders, verbose=False)
    assert out == [{"v/dataloader_idx_0": 1.0, "shared": 3.0}, {"v/dataloader_idx_1": 2.0, "shared": 3.0}]
    assert float(trainer.callback_metrics["v/dataloader_idx_0"]) == 1.0
    assert float(trainer.callback_metrics["v/dataloader_idx_1"]) == 2.0
    assert "v" not in trainer.callback_metrics


def test_multiple_val_dataloaders_in_fit(tmp_path):
    loaders = [DataLoader(ToyDataset(32, 16), batch_size=8), DataLoader(ToyDataset(32, 8), batch_size=8)]
    model = Logs(val_log=lambda m, b, i, dl_idx: m.log("v", float(dl_idx)))
    trainer = make_trainer(tmp_path, limit_train_batches=1)
    trainer.fit(model, val_dataloaders=loaders)
    assert float(trainer.logged_metrics["v/dataloader_idx_1"]) == 1.0


# ---------------------------------------------------------------- outside a run, and value types
def test_log_outside_a_trainer_warns_once():
    model = ToyModel()
    with pytest.warns(UserWarning, match=r"self.log\('x'\) was called outside a Trainer run; the value is dropped"):
        model.log("x", 1.0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.log("x", 1.0)  # once is enough


def test_log_after_fit_warns(tmp_path):
    model = ToyModel()
    make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(model)
    with pytest.warns(UserWarning, match="outside a Trainer run"):
        model.log("x", 1.0)


def test_training_step_values_stay_tensors(tmp_path):
    seen = []

    class Keep(ToyModel):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("kept", loss * 2, prog_bar=True)
            return loss

    class Check(surge.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append((type(trainer.callback_metrics["kept"]), type(trainer.callback_metrics["train_loss"])))

    trainer = make_trainer(tmp_path, limit_train_batches=3, limit_val_batches=0, log_every_n_steps=100,
                           callbacks=[Check()])
    trainer.fit(Keep())
    assert len(seen) == 3 and all(a is torch.Tensor and b is torch.Tensor for a, b in seen)
    value = trainer.callback_metrics["kept"]
    assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad
    assert type(trainer.progress_bar_metrics["kept"]) is float  # the bar shows numbers, as in Lightning


def test_logged_ints_become_floats(tmp_path):
    model = Logs(val_log=lambda m, b, i: m.log("count", torch.tensor(3)))
    trainer = make_trainer(tmp_path, limit_val_batches=2)
    out = trainer.validate(model, verbose=False)
    assert out == [{"count": 3.0}]
    assert trainer.callback_metrics["count"].is_floating_point()


def test_sanity_check_metrics_are_not_kept(tmp_path):
    logger = CSVLogger(tmp_path)
    model = Logs(val_log=lambda m, b, i: m.log("v", 100.0 if m.trainer.sanity_checking else 1.0))
    trainer = make_trainer(tmp_path, num_sanity_val_steps=2, limit_train_batches=1, limit_val_batches=2, logger=logger)
    trainer.fit(model)
    assert float(trainer.callback_metrics["v"]) == 1.0
    assert [float(r["v"]) for r in csv_rows(logger) if r.get("v")] == [1.0]
