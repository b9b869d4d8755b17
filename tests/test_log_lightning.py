"""self.log takes what Lightning's takes: torchmetrics objects, reduce_fx callables, logging from every hook that
has a step or an epoch, one name from several hooks; its errors have Lightning's shape, in surge's words."""
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.demos.toy import ToyModel
from surge.loggers import CSVLogger
from surge.utils import MisconfigurationError


def make_trainer(tmp_path, **kwargs):
    for key, value in dict(enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                           logger=False, num_sanity_val_steps=0, accelerator="cpu", max_epochs=1).items():
        kwargs.setdefault(key, value)
    return surge.Trainer(default_root_dir=tmp_path, **kwargs)


class Logs(ToyModel):
    """Runs ``train_log(module, batch_idx)`` in training_step and ``val_log`` in validation_step."""

    def __init__(self, train_log=None, val_log=None):
        super().__init__()
        self.train_log, self.val_log = train_log, val_log

    def training_step(self, batch, batch_idx):
        if self.train_log:
            self.train_log(self, batch_idx)
        return self.loss(batch)

    def validation_step(self, batch, batch_idx):
        if self.val_log:
            self.val_log(self, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


# ---------------------------------------------------------------- torchmetrics
def labelled(n=16, batch_size=4):
    """Predictions 0/1 and targets where exactly the first half of every batch is right."""
    preds = torch.tensor([1, 1, 0, 0] * (n // 4))
    target = torch.tensor([1, 1, 1, 1] * (n // 4))
    return DataLoader(TensorDataset(preds.float(), target), batch_size=batch_size)


def test_a_metric_logs_its_step_value_and_its_epoch_compute(tmp_path):
    torchmetrics = pytest.importorskip("torchmetrics")
    steps, epoch_ends = [], []

    class WithAccuracy(ToyModel):
        def __init__(self):
            super().__init__()
            self.acc = torchmetrics.classification.BinaryAccuracy()

        def training_step(self, batch, batch_idx):
            preds, target = batch
            value = self.acc(preds, target)  # the batch's accuracy
            steps.append(float(value))
            self.log("acc", self.acc, on_step=True, on_epoch=True)
            return self.layer(torch.ones(1, 32)).sum() * 0

        def on_train_epoch_end(self):
            epoch_ends.append(int(self.acc._update_count))  # before surge resets it

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = WithAccuracy()
    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0, log_every_n_steps=1)
    trainer.fit(model, train_dataloaders=labelled())
    assert steps == [0.5] * 8
    assert float(trainer.logged_metrics["acc_step"]) == 0.5
    assert float(trainer.callback_metrics["acc_epoch"]) == 0.5
    assert epoch_ends == [4, 4]  # updated per step, reset after each epoch's compute
    assert model.acc._update_count == 0


def test_a_metric_updated_without_forward_logs_only_its_epoch_value(tmp_path):
    torchmetrics = pytest.importorskip("torchmetrics")

    class Summed(Logs):
        def __init__(self):
            super().__init__()
            self.total = torchmetrics.SumMetric()

        def validation_step(self, batch, batch_idx):
            self.total.update(torch.tensor(float(batch_idx)))
            self.log("total", self.total)

    trainer = make_trainer(tmp_path, limit_val_batches=4)
    assert trainer.validate(Summed(), verbose=False) == [{"total": 6.0}]


def test_a_metric_collection_in_log_dict(tmp_path):
    torchmetrics = pytest.importorskip("torchmetrics")

    class Collection(Logs):
        def __init__(self):
            super().__init__()
            self.metrics = torchmetrics.MetricCollection(
                {"acc": torchmetrics.classification.BinaryAccuracy()}, prefix="val_")

        def validation_step(self, batch, batch_idx):
            self.metrics.update(*batch)
            self.log_dict(self.metrics)

    out = make_trainer(tmp_path).validate(Collection(), dataloaders=labelled(), verbose=False)
    assert out == [{"val_acc": 0.5}]


def test_a_metric_must_be_an_attribute_of_the_module(tmp_path):
    torchmetrics = pytest.importorskip("torchmetrics")
    stray = torchmetrics.SumMetric()
    model = Logs(val_log=lambda m, i: m.log("s", stray))
    with pytest.raises(MisconfigurationError, match=r"fix this by setting an attribute for the metric in your"):
        make_trainer(tmp_path, limit_val_batches=1).validate(model, verbose=False)
    model.own = torchmetrics.SumMetric()
    with pytest.raises(MisconfigurationError, match=r"`self.log\(s, ..., metric_attribute=name\)` where `name` is one "
                                                    r"of \['own'\]"):
        make_trainer(tmp_path, limit_val_batches=1).validate(model, verbose=False)


# ---------------------------------------------------------------- reduce_fx
@pytest.mark.parametrize("reduce_fx, expected", [(max, 3.0), (min, 0.0), (sum, 6.0), (torch.mean, 1.5),
                                                  (torch.max, 3.0), ("MAX", 3.0)])
def test_reduce_fx_callables(tmp_path, reduce_fx, expected):
    model = Logs(val_log=lambda m, i: m.log("v", float(i), reduce_fx=reduce_fx))
    assert make_trainer(tmp_path, limit_val_batches=4).validate(model, verbose=False) == [{"v": expected}]


def test_other_reduce_fx_is_refused_in_lightnings_words(tmp_path):
    model = Logs(val_log=lambda m, i: m.log("v", 1.0, reduce_fx=torch.argmax))
    with pytest.raises(MisconfigurationError, match=r"reduce_fx=\{min,max,mean,sum\}\)` are supported"):
        make_trainer(tmp_path, limit_val_batches=1).validate(model, verbose=False)


# ---------------------------------------------------------------- where self.log may be called
def test_logging_from_the_hooks_lightning_allows(tmp_path):
    class Everywhere(Logs):
        def on_train_start(self):
            self.log("train_start", 1.0)

        def on_train_epoch_start(self):
            self.log("epoch_start", 2.0)

        def on_before_backward(self, loss):
            self.log("before_backward", 3.0)

        def on_after_backward(self):
            self.log("after_backward", 4.0, on_epoch=True, reduce_fx="sum")

        def on_before_optimizer_step(self, optimizer):
            self.log("before_step", 5.0)

        def on_validation_start(self):
            self.log("val_start", 6.0)

        def on_validation_batch_end(self, outputs, batch, batch_idx):
            self.log("val_batch_end", float(batch_idx))

        def on_validation_epoch_end(self):
            self.log("val_epoch_end", 7.0)

    class Callback(surge.Callback):
        def on_train_epoch_end(self, trainer, module):
            module.log("callback_epoch_end", 8.0)

    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=2, callbacks=[Callback()])
    trainer.fit(Everywhere())
    got = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert got["train_start"] == 1.0 and got["epoch_start"] == 2.0  # epoch values of the first epoch
    assert got["before_backward"] == 3.0 and got["before_step"] == 5.0
    assert got["after_backward_step"] == 4.0 and got["after_backward_epoch"] == 8.0
    assert got["val_start"] == 6.0 and got["val_batch_end"] == 0.5 and got["val_epoch_end"] == 7.0
    assert got["callback_epoch_end"] == 8.0


@pytest.mark.parametrize("hook", ["on_fit_start", "on_train_end", "on_validation_end", "setup"])
def test_hooks_without_a_step_or_epoch_refuse_self_log(tmp_path, hook):
    def log_here(self, *args):
        self.log("x", 1.0)

    model = type("Refused", (Logs,), {hook: log_here})()
    with pytest.raises(MisconfigurationError, match=rf"You can't `self.log\(\)` inside `{hook}`"):
        make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=1).fit(model)


def test_epoch_hooks_refuse_on_step(tmp_path):
    class StepInEpochStart(Logs):
        def on_train_epoch_start(self):
            self.log("x", 1.0, on_step=True)

    with pytest.raises(MisconfigurationError, match=r"You can't `self.log\(on_step=True\)` inside "
                                                    r"`on_train_epoch_start`, must be one of \(False,\)"):
        make_trainer(tmp_path, limit_train_batches=1).fit(StepInEpochStart())


def test_neither_on_step_nor_on_epoch_is_not_useful(tmp_path):
    model = Logs(train_log=lambda m, i: m.log("x", 1.0, on_step=False, on_epoch=False))
    with pytest.raises(MisconfigurationError, match=r"`self.log\(on_step=False, on_epoch=False\)` is not useful"):
        make_trainer(tmp_path, limit_train_batches=1).fit(model)


# ---------------------------------------------------------------- one name, several hooks
def test_one_name_from_two_hooks_with_their_own_options(tmp_path):
    class TwoHooks(Logs):
        def training_step(self, batch, batch_idx):
            self.log("score", float(batch_idx))  # per step
            return self.loss(batch)

        def on_train_epoch_end(self):
            self.log("score", 100.0 + self.current_epoch)  # per epoch

    seen = []

    class Read(surge.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            seen.append(float(trainer.callback_metrics["score"]))

    logger = CSVLogger(tmp_path)
    trainer = make_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=0, logger=logger,
                           log_every_n_steps=1, callbacks=[Read()])
    trainer.fit(TwoHooks())
    assert seen == [0.0, 1.0, 0.0, 1.0]  # each step's value, as Lightning gives it to callbacks
    assert float(trainer.callback_metrics["score"]) == 101.0


def test_one_name_twice_in_one_hook_with_other_options_is_an_error(tmp_path):
    def twice(m, i):
        m.log("foo", 1.0, prog_bar=False)
        m.log("foo", 1.0, prog_bar=True)

    with pytest.raises(MisconfigurationError, match=r"You called `self.log\(foo, ...\)` twice in `training_step` with "
                                                    r"different arguments.*prog_bar=True.*prog_bar=False"):
        make_trainer(tmp_path, limit_train_batches=1).fit(Logs(train_log=twice))


# ---------------------------------------------------------------- what the trainer's dicts hold
def test_progress_bar_metrics_are_floats_and_the_others_tensors(tmp_path):
    def train_log(m, i):
        m.log("loss_bar", float(i), prog_bar=True, on_epoch=True)

    trainer = make_trainer(tmp_path, limit_train_batches=3, limit_val_batches=0, log_every_n_steps=100)
    trainer.fit(Logs(train_log=train_log))
    bar = trainer.progress_bar_metrics
    assert bar == {"loss_bar_step": 2.0, "loss_bar_epoch": 1.0}
    assert all(type(v) is float for v in bar.values())
    assert all(type(v) is float for v in dict(bar).values()) and type({**bar}["loss_bar_step"]) is float
    assert isinstance(trainer.callback_metrics["loss_bar"], torch.Tensor)
    # logged_metrics holds the last step's values even between two writes to the loggers (every 100 steps)
    assert isinstance(trainer.logged_metrics["loss_bar_step"], torch.Tensor)
    assert float(trainer.logged_metrics["loss_bar_step"]) == 2.0


@pytest.mark.parametrize("value, message", [
    ("foo", r"`self.log\(x, foo\)` was called, but `str` values cannot be logged"),
    ([1, 2, 3], r"`self.log\(x, \[1, 2, 3\]\)` was called, but `list` values cannot be logged"),
    ({"a": {"b": 1}}, r"nested dictionaries cannot be logged"),
    (torch.tensor([1.0, 2.0]), r"the tensor must have a single element"),
])
def test_invalid_values(tmp_path, value, message):
    model = Logs(train_log=lambda m, i: m.log("x", value))
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, limit_train_batches=1).fit(model)


def test_bools_and_half_precision_are_logged_as_floats(tmp_path):
    def val_log(m, i):
        m.log("flag", i % 2 == 0)
        m.log("half", torch.tensor(0.5, dtype=torch.bfloat16))

    trainer = make_trainer(tmp_path, limit_val_batches=4)
    assert trainer.validate(Logs(val_log=val_log), verbose=False) == [{"flag": 0.5, "half": 0.5}]
    assert trainer.callback_metrics["half"].dtype == torch.float32


def test_a_name_with_a_dataloader_suffix_is_refused(tmp_path):
    model = Logs(train_log=lambda m, i: m.log("foo/dataloader_idx_0", 1.0))
    with pytest.raises(MisconfigurationError, match=r"`self.log` with the key `foo/dataloader_idx_0`"):
        make_trainer(tmp_path, limit_train_batches=1).fit(model)


def test_logger_true_without_a_logger_warns(tmp_path):
    model = Logs(train_log=lambda m, i: m.log("x", 1.0, logger=True))
    with pytest.warns(UserWarning, match=r"`self.log\('x', ..., logger=True\)` but have no logger configured"):
        make_trainer(tmp_path, limit_train_batches=1).fit(model)


def test_barebones_drops_self_log_with_a_warning(tmp_path):
    model = Logs(train_log=lambda m, i: m.log("x", 1.0))
    trainer = surge.Trainer(default_root_dir=tmp_path, barebones=True, max_epochs=1, limit_train_batches=2,
                            limit_val_batches=0, accelerator="cpu")
    with pytest.warns(UserWarning, match=r"`Trainer\(barebones=True\)`"):
        trainer.fit(model)
    assert "x" not in trainer.callback_metrics
