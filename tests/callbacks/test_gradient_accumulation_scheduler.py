"""GradientAccumulationScheduler: the optimizer steps at the scheduled intervals, with the accumulated gradients."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.callbacks import GradientAccumulationScheduler
from surge.utils import MisconfigurationError

X = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
Y = X @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3


def loader():
    return DataLoader(TensorDataset(X, Y), batch_size=2)  # 8 batches an epoch, in order


def fresh_layer():
    torch.manual_seed(0)
    return nn.Linear(3, 1)


class Recorder(surge.Module):
    """Notes (epoch, batch_idx) of each optimizer step, and the factor the epoch starts with."""

    def __init__(self):
        super().__init__()
        self.layer = fresh_layer()
        self.steps, self.factors = [], {}
        self._batch = None

    def on_train_epoch_start(self):
        self.factors[self.current_epoch] = self.trainer.accumulate_grad_batches

    def training_step(self, batch, batch_idx):
        self._batch = batch_idx
        x, y = batch
        return F.mse_loss(self.layer(x), y)

    def on_before_optimizer_step(self, optimizer):
        self.steps.append((self.current_epoch, self._batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def fit(callbacks, model=None, max_epochs=4, **kw):
    model = model or Recorder()
    t = surge.Trainer(max_epochs=max_epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kw)
    t.fit(model, loader())
    return t, model


def by_hand(schedule, epochs):
    """The same training written out: the mean loss of each window backpropagated, one step per window
    (and one at an epoch's end inside a window)."""
    layer = fresh_layer()
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    batches = list(loader())
    for epoch in range(epochs):
        factor = schedule(epoch)
        opt.zero_grad()
        for i, (x, y) in enumerate(batches):
            (F.mse_loss(layer(x), y) / factor).backward()
            if (i + 1) % factor == 0 or i + 1 == len(batches):
                opt.step()
                opt.zero_grad()
    return layer


def test_steps_happen_at_the_scheduled_intervals():
    t, model = fit([GradientAccumulationScheduler({1: 2, 2: 3, 3: 8})])
    assert model.factors == {0: 1, 1: 2, 2: 3, 3: 8}
    per_epoch = {e: [b for ep, b in model.steps if ep == e] for e in range(4)}
    assert per_epoch[0] == [0, 1, 2, 3, 4, 5, 6, 7]  # factor 1: every batch
    assert per_epoch[1] == [1, 3, 5, 7]               # factor 2
    assert per_epoch[2] == [2, 5, 7]                  # factor 3: and the epoch's last batch
    assert per_epoch[3] == [7]                        # factor 8: once
    assert t.global_step == 8 + 4 + 3 + 1
    assert t.accumulate_grad_batches == 8  # as the last epoch left it


def test_weights_equal_the_same_accumulation_written_by_hand():
    scheduler = GradientAccumulationScheduler({1: 2, 2: 3, 3: 8})
    _, model = fit([scheduler])
    expected = by_hand(scheduler.get_accumulate_grad_batches, 4)
    for got, want in zip(model.layer.parameters(), expected.parameters()):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-5, atol=1e-6)
    # and it differs from no accumulation at all: the schedule changed the training
    plain = by_hand(lambda epoch: 1, 4)
    assert not torch.allclose(model.layer.weight, plain.weight)


def test_epochs_before_the_first_key_step_every_batch():
    scheduler = GradientAccumulationScheduler({2: 4})
    assert scheduler.scheduling == {2: 4, 0: 1} and scheduler.epochs == [0, 2]
    assert [scheduler.get_accumulate_grad_batches(e) for e in range(5)] == [1, 1, 4, 4, 4]
    t, model = fit([scheduler], max_epochs=3)
    assert model.factors == {0: 1, 1: 1, 2: 4}
    assert t.global_step == 8 + 8 + 2


def test_going_to_accumulate():
    assert GradientAccumulationScheduler({0: 2}).going_to_accumulate_grad_batches()
    assert not GradientAccumulationScheduler({0: 1, 3: 1}).going_to_accumulate_grad_batches()


@pytest.mark.parametrize("scheduling, error, match", [
    ({}, TypeError, "Empty dict|empty dict"),
    ({-1: 2}, MisconfigurationError, "Epoch should be an int greater than or equal to 0"),
    ({"1": 2}, MisconfigurationError, "Epoch should be an int"),
    ({1: 0}, MisconfigurationError, "Accumulation factor should be an int greater than 0"),
    ({1: 2.5}, MisconfigurationError, "Accumulation factor should be an int"),
])
def test_invalid_schedules(scheduling, error, match):
    with pytest.raises(error, match=match):
        GradientAccumulationScheduler(scheduling)


def test_conflicts_with_the_trainers_own_accumulation():
    with pytest.raises(ValueError, match="Either remove `accumulate_grad_batches` from the Trainer or remove the callback"):
        fit([GradientAccumulationScheduler({0: 2})], accumulate_grad_batches=2)


def test_manual_optimisation_is_an_error():
    class Manual(Recorder):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            x, y = batch
            self.manual_backward(F.mse_loss(self.layer(x), y))
            opt.step()
            opt.zero_grad()

    with pytest.raises(RuntimeError, match="not supported for\\s+manual optimization"):
        fit([GradientAccumulationScheduler({0: 2})], model=Manual())


def test_own_optimizer_step_warns_when_accumulating():
    class OwnStep(Recorder):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            optimizer.step(closure=optimizer_closure)

    with pytest.warns(UserWarning, match="hooks will not be called on every batch"):
        fit([GradientAccumulationScheduler({0: 2})], model=OwnStep(), max_epochs=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*hooks will not be called.*")
        fit([GradientAccumulationScheduler({0: 1})], model=OwnStep(), max_epochs=1)  # never accumulates: quiet


def test_lightning_module_path():
    from surge.lightning.callbacks import GradientAccumulationScheduler as FromPackage
    from surge.lightning.callbacks.gradient_accumulation_scheduler import GradientAccumulationScheduler as FromModule

    assert FromPackage is FromModule is GradientAccumulationScheduler
