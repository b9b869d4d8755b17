"""LR schedulers as Lightning code hands them over: schedulers that are not torch's (stepped through
``lr_scheduler_step``), ReduceLROnPlateau stepped by the user under manual optimisation, and the keys of
a scheduler dict that surge ignores, with a warning, rather than refuses. Checked against schedulers
stepped by hand."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge import Module
from surge.optim import parse_optimizers
from surge.utils import MisconfigurationError


def trainer(**kwargs):
    base = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)
    base.update(kwargs)
    return surge.Trainer(**base)


def loader(n=32, batch_size=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


class HalvingScheduler:
    """Not a torch scheduler: halves the LR on ``halve()``; has the state a checkpoint needs, no ``step``."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.calls = []

    def halve(self, metric=None):
        self.calls.append(metric)
        for group in self.optimizer.param_groups:
            group["lr"] /= 2

    def state_dict(self):
        return {"calls": list(self.calls)}

    def load_state_dict(self, state):
        self.calls = list(state["calls"])


class Model(Module):
    """``make(module)`` is what configure_optimizers returns."""

    def __init__(self, make, manual=False):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)
        self.make = make
        self.automatic_optimization = not manual
        self.lrs = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True)
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        self.lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()

    def configure_optimizers(self):
        return self.make(self)


class SteppedByHook(Model):
    """Steps the non-torch scheduler the way the module knows."""

    def lr_scheduler_step(self, scheduler, metric):
        scheduler.halve(None if metric is None else float(metric))


def sgd(module):
    return torch.optim.SGD(module.parameters(), lr=1.0)


# ---------------------------------------------------------------- schedulers that are not torch's
def test_custom_scheduler_is_stepped_through_lr_scheduler_step():
    model = SteppedByHook(lambda m: ([opt := sgd(m)], [HalvingScheduler(opt)]))
    t = trainer(max_epochs=3)
    t.fit(model, loader())
    sched = t.lr_scheduler_configs[0].scheduler
    assert sched.calls == [None, None, None]  # once per epoch, no metric
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(1.0 / 8)
    assert model.lr_schedulers() is sched


def test_custom_scheduler_with_a_monitor_gets_the_metric():
    def make(m):
        opt = sgd(m)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": HalvingScheduler(opt), "monitor": "train_loss",
                                                   "reduce_on_plateau": True, "interval": "epoch"}}

    model = SteppedByHook(make)
    t = trainer(max_epochs=2)
    t.fit(model, loader())
    calls = t.lr_scheduler_configs[0].scheduler.calls
    assert len(calls) == 2 and all(isinstance(c, float) for c in calls)
    assert t.lr_scheduler_configs[0].reduce_on_plateau


def test_custom_scheduler_without_the_hook_is_refused_under_automatic_optimisation():
    model = Model(lambda m: ([opt := sgd(m)], [HalvingScheduler(opt)]))
    with pytest.raises(MisconfigurationError, match=r"`HalvingScheduler` doesn't follow PyTorch's LRScheduler API.*"
                                                    r"override `Model.lr_scheduler_step"):
        trainer(max_epochs=1).fit(model, loader())


def test_custom_scheduler_under_manual_optimisation_needs_no_hook():
    stepped = []

    class Manual(Model):
        def on_train_epoch_end(self):
            sched = self.lr_schedulers()
            sched.halve()
            stepped.append(self.optimizers().param_groups[0]["lr"])

    model = Manual(lambda m: ([opt := sgd(m)], [HalvingScheduler(opt)]), manual=True)
    t = trainer(max_epochs=2)
    t.fit(model, loader())
    assert stepped == [0.5, 0.25]  # only the user stepped it
    assert model.lrs == [1.0] * 4 + [0.5] * 4


def test_a_scheduler_needs_state_dict_for_checkpoints():
    class Stateless:
        def __init__(self, optimizer):
            self.optimizer = optimizer

        def step(self):
            pass

    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    with pytest.raises(TypeError, match=r"`Stateless` is invalid: it needs `state_dict\(\)` and `load_state_dict\(\)`"):
        parse_optimizers(([opt], [Stateless(opt)]), automatic=False)


def test_a_scheduler_on_another_optimizer_is_refused():
    layer = nn.Linear(1, 1)
    opt, other = torch.optim.SGD(layer.parameters(), lr=1.0), torch.optim.SGD(layer.parameters(), lr=1.0)
    with pytest.raises(MisconfigurationError, match="attached with an optimizer that wasn't returned from configure_optimizers"):
        parse_optimizers(([opt], [torch.optim.lr_scheduler.StepLR(other, 1)]))


# ---------------------------------------------------------------- ReduceLROnPlateau under manual optimisation
def test_reduce_on_plateau_stepped_by_the_user_under_manual_optimisation():
    scripted = [1.0, 1.0, 1.0, 1.0]  # no improvement after the first epoch: the LR drops (patience 0)

    class Manual(Model):
        def on_train_epoch_end(self):
            self.lr_schedulers().step(torch.tensor(scripted[self.current_epoch]))

    def make(m):
        opt = sgd(m)
        return [opt], [torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)]

    model = Manual(make, manual=True)
    t = trainer(max_epochs=4)
    t.fit(model, loader())  # no "monitor" needed: the Trainer never steps it

    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, factor=0.5, patience=0)
    per_epoch = []
    for value in scripted:
        per_epoch.append(ref_opt.param_groups[0]["lr"])
        ref.step(value)
    assert model.lrs[::4] == pytest.approx(per_epoch) == [1.0, 1.0, 0.5, 0.25]
    assert not t.lr_scheduler_configs[0].reduce_on_plateau


def test_manual_optimisation_ignores_stepping_keys_with_a_warning():
    class Manual(Model):
        def on_train_epoch_end(self):
            self.lr_schedulers().step(torch.tensor(0.0))

    def make(m):
        opt = sgd(m)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        return [opt], [{"scheduler": sched, "monitor": "train_loss", "strict": True, "interval": "step"}]

    t = trainer(max_epochs=1)
    with pytest.warns(RuntimeWarning, match=r"contains the key\(s\) \['monitor', 'strict'\], but the keys will be ignored"):
        t.fit(Manual(make, manual=True), loader())
    config = t.lr_scheduler_configs[0]
    assert config.interval == "step" and config.monitor is None  # interval stays: LearningRateMonitor reads it


def test_the_trainer_does_not_step_schedulers_under_manual_optimisation():
    model = Model(lambda m: ([opt := sgd(m)], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)]),
                  manual=True)
    t = trainer(max_epochs=2)
    t.fit(model, loader())
    assert t.lr_scheduler_configs[0].scheduler.last_epoch == 0
    assert model.lrs == [1.0] * 8


def test_reduce_on_plateau_under_automatic_optimisation_still_needs_a_monitor():
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    with pytest.raises(MisconfigurationError, match="must include a monitor"):
        parse_optimizers(([opt], [torch.optim.lr_scheduler.ReduceLROnPlateau(opt)]))
    _, configs = parse_optimizers(([opt], [torch.optim.lr_scheduler.ReduceLROnPlateau(opt)]), automatic=False)
    assert configs[0].monitor is None


# ---------------------------------------------------------------- shapes and keys
def test_a_single_scheduler_after_the_optimizer_list():
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    opts, configs = parse_optimizers(([opt], sched))
    assert opts == [opt] and [c.scheduler for c in configs] == [sched]
    _, configs = parse_optimizers(([opt], {"scheduler": sched, "interval": "step"}))
    assert configs[0].interval == "step"


def test_unknown_keys_warn_and_are_ignored():
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    with pytest.warns(RuntimeWarning, match=r"Found unsupported keys in the lr scheduler dict: \{'intervall'\}"):
        _, configs = parse_optimizers({"optimizer": opt, "lr_scheduler": {"scheduler": sched, "intervall": "step"}})
    assert configs[0].interval == "epoch"
    with pytest.warns(RuntimeWarning, match=r"Found unsupported keys in the optimizer configuration: \{'frequency'\}"):
        parse_optimizers({"optimizer": opt, "frequency": 2})


def test_one_cycle_per_epoch_is_questioned():
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)
    with pytest.warns(RuntimeWarning, match=r"`OneCycleLR` scheduler is using 'interval': 'epoch'"):
        parse_optimizers(([opt], [one_cycle]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parse_optimizers({"optimizer": opt, "lr_scheduler": {"scheduler": one_cycle, "interval": "step"}})


def test_config_fields_follow_lightning():
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    _, configs = parse_optimizers({"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt),
                                   "monitor": "val_loss"})
    c = configs[0]
    assert (c.interval, c.frequency, c.monitor, c.strict, c.name, c.reduce_on_plateau) == \
        ("epoch", 1, "val_loss", True, None, True)
