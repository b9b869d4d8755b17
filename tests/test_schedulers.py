"""configure_optimizers' return shapes and LR schedulers, checked against schedulers stepped by hand."""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from surge import Module, Trainer
from surge.optim import parse_optimizers
from surge.utils import SurgeError


def make_trainer(**kwargs):
    base = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)
    base.update(kwargs)
    return Trainer(**base)


def loader(n=40, batch_size=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


class Model(Module):
    """``make_opt(params)`` returns what configure_optimizers gives back."""

    def __init__(self, make_opt, val_losses=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)
        self.make_opt = make_opt
        self.val_losses = val_losses
        self.lrs = []  # LR at the start of every training batch

    def training_step(self, batch, batch_idx):
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return self.make_opt(self)


class ValModel(Model):
    def validation_step(self, batch, batch_idx):
        # a scripted val_loss per epoch, so the plateau logic is predictable
        self.log("val_loss", torch.tensor(self.val_losses[self.current_epoch]))


def sgd(module, lr=1.0):
    return torch.optim.SGD(module.parameters(), lr=lr)


def hand_stepped(make_sched, n_steps):
    """The LR of a fresh optimizer/scheduler stepped ``n_steps`` times."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_sched(opt)
    for _ in range(n_steps):
        opt.step()
        sched.step()
    return opt.param_groups[0]["lr"], sched


# ---------------------------------------------------------------------------------------- shapes
def test_single_optimizer_and_list():
    model = Model(lambda m: sgd(m, 0.1))
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, loader())
    assert len(trainer.optimizers) == 1 and trainer.lr_scheduler_configs == []
    assert trainer.global_step == 5

    model = Model(lambda m: [sgd(m, 0.1)])
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, loader())
    assert len(trainer.optimizers) == 1 and trainer.global_step == 5


def test_optimizers_and_epoch_schedulers_tuple():
    def make(m):
        opt = sgd(m)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)]

    model = Model(make)
    trainer = make_trainer(max_epochs=5)
    trainer.fit(model, loader())
    # LR within epoch e is 0.1 ** (e // 2): the scheduler steps once per epoch, after it.
    assert model.lrs == pytest.approx([0.1 ** (e // 2) for e in range(5) for _ in range(5)])
    expected, ref = hand_stepped(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.1), 5)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(expected)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == ref.last_epoch == 5
    assert trainer.lr_scheduler_configs[0].interval == "epoch"


@pytest.mark.parametrize("interval,frequency,expected_steps", [("step", 1, 15), ("step", 2, 7), ("epoch", 2, 1),
                                                               ("epoch", 1, 3)])
def test_dict_with_scheduler_dict(interval, frequency, expected_steps):
    def make(m):
        opt = sgd(m)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval, "frequency": frequency}}

    model = Model(make)
    trainer = make_trainer(max_epochs=3)
    trainer.fit(model, loader())
    assert trainer.global_step == 15
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == expected_steps
    expected, _ = hand_stepped(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9), expected_steps)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(expected)
    if interval == "step" and frequency == 2:
        # stepped after optimizer steps 2, 4, ...: batches 0-1 at lr 1, batches 2-3 at 0.9, ...
        assert model.lrs[:6] == pytest.approx([1, 1, 0.9, 0.9, 0.81, 0.81])


def test_step_scheduler_with_accumulation_steps_per_optimizer_step():
    def make(m):
        opt = sgd(m)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, 0.5),
                                                   "interval": "step"}}

    trainer = make_trainer(max_epochs=2, accumulate_grad_batches=2)
    model = Model(make)
    trainer.fit(model, loader())  # 5 batches: 3 steps an epoch
    assert trainer.global_step == 6
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 6
    assert model.lrs[:5] == pytest.approx([1, 1, 0.5, 0.5, 0.25])


def test_list_of_dicts_two_optimizers():
    class Two(Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 1), nn.Linear(3, 1)

        def training_step(self, batch, batch_idx, optimizer_idx):
            x, y = batch
            layer = self.a if optimizer_idx == 0 else self.b
            return F.mse_loss(layer(x), y)

        def configure_optimizers(self):
            oa = torch.optim.SGD(self.a.parameters(), lr=1.0)
            ob = torch.optim.SGD(self.b.parameters(), lr=1.0)
            return [
                {"optimizer": oa, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.ExponentialLR(oa, 0.5),
                                                   "interval": "step"}},
                {"optimizer": ob, "lr_scheduler": torch.optim.lr_scheduler.ExponentialLR(ob, 0.1)},
            ]

    trainer = make_trainer(max_epochs=2)
    trainer.fit(Two(), loader())
    assert [c.opt_idx for c in trainer.lr_scheduler_configs] == [0, 1]
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.5 ** 10)
    assert trainer.optimizers[1].param_groups[0]["lr"] == pytest.approx(0.1 ** 2)


def test_bad_shapes_raise_clearly():
    m = nn.Linear(2, 2)
    opt = torch.optim.SGD(m.parameters(), lr=1.0)
    with pytest.raises(SurgeError, match="configure_optimizers"):
        parse_optimizers("adam")
    with pytest.raises(SurgeError, match="interval"):
        parse_optimizers({"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1),
                                                             "interval": "batch"}})
    with pytest.raises(SurgeError, match="frequency"):
        parse_optimizers({"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1),
                                                             "frequency": 0}})
    with pytest.raises(SurgeError, match="monitor"):
        parse_optimizers({"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt)})
    with pytest.raises(SurgeError, match="optimizer"):
        parse_optimizers({"lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1)})


# ---------------------------------------------------------------------------------------- ReduceLROnPlateau
def test_reduce_on_plateau_steps_on_monitored_val_metric():
    val_losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.8]

    def make(m):
        opt = sgd(m)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1)
        return {"optimizer": opt, "lr_scheduler": sched, "monitor": "val_loss"}

    model = ValModel(make, val_losses)
    trainer = make_trainer(max_epochs=len(val_losses), limit_val_batches=1)
    trainer.fit(model, loader(), loader())

    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, mode="min", factor=0.5, patience=1)
    per_epoch = []
    for v in val_losses:
        ref.step(v)
        per_epoch.append(ref_opt.param_groups[0]["lr"])
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert per_epoch == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]  # the script really drops the LR twice
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(per_epoch[-1])
    assert sched.num_bad_epochs == ref.num_bad_epochs
    assert sched.best == pytest.approx(ref.best)
    # the LR used in each epoch is the one after the previous epoch's plateau step
    assert model.lrs[::5] == pytest.approx([1.0] + per_epoch[:-1])


def test_reduce_on_plateau_on_train_epoch_metric():
    def make(m):
        opt = sgd(m, 0.01)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.1, patience=0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "train_loss"}}

    # mode="max" on a falling loss: every epoch after the first is "bad", so the LR drops each time.
    trainer = make_trainer(max_epochs=3)
    trainer.fit(Model(make), loader())
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.1 ** 2)


def test_missing_monitor_is_an_error_unless_not_strict():
    def make(m, strict):
        opt = sgd(m)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "nope", "strict": strict}}

    with pytest.raises(SurgeError, match="nope"):
        make_trainer(max_epochs=1).fit(Model(lambda m: make(m, True)), loader())
    with pytest.warns(UserWarning, match="nope"):
        trainer = make_trainer(max_epochs=1)
        trainer.fit(Model(lambda m: make(m, False)), loader())
    assert trainer.optimizers[0].param_groups[0]["lr"] == 1.0


# ---------------------------------------------------------------------------------------- OneCycleLR
@pytest.mark.parametrize("kwargs,expected", [
    (dict(max_epochs=3), 15),
    (dict(max_epochs=3, accumulate_grad_batches=2), 9),
    (dict(max_epochs=3, limit_train_batches=2), 6),
    (dict(max_steps=7), 7),
    (dict(max_epochs=2, max_steps=100), 10),  # whichever ends fit first
    (dict(max_epochs=5, max_steps=12), 12),
])
def test_estimated_stepping_batches_sizes_one_cycle(kwargs, expected):
    seen = {}

    def make(m):
        opt = sgd(m, 0.1)
        total = m.trainer.estimated_stepping_batches
        seen["total"] = total
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    trainer = make_trainer(**kwargs)
    trainer.fit(Model(make), loader())
    assert seen["total"] == expected
    assert trainer.global_step == expected
    # stepping past total_steps would have raised; the schedule ends where a hand-stepped one does
    lr, _ = hand_stepped(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=expected), expected)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(lr)


def test_estimated_stepping_batches_unbounded():
    def gen():
        x = torch.randn(8, 3)
        for _ in range(3):
            yield x, x.sum(1, keepdim=True)

    class Iterable(torch.utils.data.IterableDataset):
        def __iter__(self):
            return gen()

    seen = {}

    def make(m):
        seen["total"] = m.trainer.estimated_stepping_batches
        return sgd(m, 0.01)

    trainer = make_trainer(max_epochs=2)
    trainer.fit(Model(make), DataLoader(Iterable(), batch_size=None))
    assert seen["total"] == math.inf
    assert trainer.global_step == 6
