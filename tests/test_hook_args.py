"""Hooks get the arguments their signatures take, in the order Lightning users rely on; the fit loop's warnings.

A ``training_step(self, batch)`` gets the batch alone; ``dataloader_idx`` comes only with several loaders;
``optimizer_step`` and ``configure_gradient_clipping`` overrides are honoured; under manual optimisation
``manual_backward`` runs the backward hooks around the backward.
"""
import warnings

import pytest
import torch
from torch.utils.data import DataLoader

import surge
from surge.demos.toy import ToyModel, ToyDataset
from surge.warnings import PossibleUserWarning


def make_trainer(tmp_path, **kwargs):
    for key, value in dict(enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                           logger=False, num_sanity_val_steps=0, accelerator="cpu", max_epochs=1).items():
        kwargs.setdefault(key, value)
    return surge.Trainer(default_root_dir=tmp_path, **kwargs)


def loaders(n, length=16):
    return [DataLoader(ToyDataset(32, length, seed=k), batch_size=8) for k in range(n)]


# ---------------------------------------------------------------- step arguments by signature
def test_steps_without_batch_idx_get_the_batch_alone(tmp_path):
    seen = []

    class BatchOnly(ToyModel):
        def training_step(self, batch):
            seen.append("train")
            return self.loss(batch)

        def validation_step(self, batch):
            seen.append("val")

        def test_step(self, batch):
            seen.append("test")

        def predict_step(self, batch):
            return self(batch)

    model = BatchOnly()
    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1,
                           limit_predict_batches=1)
    trainer.fit(model)
    trainer.test(model, verbose=False)
    predictions = trainer.predict(model)
    assert seen == ["train", "train", "val", "test"]
    assert trainer.global_step == 2
    assert predictions[0].shape == (8, 2)


def test_varargs_step_gets_batch_and_batch_idx(tmp_path):
    seen = []

    class AnyArgs(ToyModel):
        def training_step(self, *args):
            seen.append(len(args))
            return self.loss(args[0])

    make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=0).fit(AnyArgs())
    assert seen == [2, 2]


def test_dataloader_idx_only_with_several_loaders(tmp_path):
    seen = []

    class Indexed(ToyModel):
        def validation_step(self, batch, batch_idx, dataloader_idx=0):
            seen.append(dataloader_idx)

        def on_validation_batch_end(self, outputs, batch, batch_idx, dataloader_idx=0):
            seen.append(("end", dataloader_idx))

    trainer = make_trainer(tmp_path, limit_val_batches=1)
    trainer.validate(Indexed(), dataloaders=loaders(1), verbose=False)
    assert seen == [0, ("end", 0)]
    seen.clear()
    trainer.validate(Indexed(), dataloaders=loaders(2), verbose=False)
    assert seen == [0, ("end", 0), 1, ("end", 1)]


def test_several_loaders_need_a_dataloader_idx_argument(tmp_path):
    class NoIdx(ToyModel):
        def validation_step(self, batch, batch_idx):
            pass

    with pytest.raises(RuntimeError, match=r"multiple `val_dataloader`, but no `dataloader_idx` argument in "
                                           r"`NoIdx.validation_step\(\)`.*dataloader_idx=0"):
        make_trainer(tmp_path).validate(NoIdx(), dataloaders=loaders(2), verbose=False)

    class HookNoIdx(ToyModel):
        def test_step(self, batch, batch_idx, dataloader_idx=0):
            pass

        def on_test_batch_start(self, batch, batch_idx):
            pass

    with pytest.raises(RuntimeError, match=r"multiple `test_dataloader`.*`HookNoIdx.on_test_batch_start\(\)`"):
        make_trainer(tmp_path).test(HookNoIdx(), dataloaders=loaders(2), verbose=False)


def test_one_loader_and_a_required_dataloader_idx_is_an_error(tmp_path):
    class NeedsIdx(ToyModel):
        def validation_step(self, batch, batch_idx, dataloader_idx):
            pass

    with pytest.raises(RuntimeError, match=r"only a single `val_dataloader`, but have included `dataloader_idx` in "
                                           r"`NeedsIdx.validation_step\(\)`.*default value"):
        make_trainer(tmp_path).validate(NeedsIdx(), dataloaders=loaders(1), verbose=False)


def test_batch_hooks_get_lightnings_arguments(tmp_path):
    seen = []

    class Batches(ToyModel):
        def on_train_batch_start(self, batch, batch_idx):
            seen.append(("start", tuple(batch.shape), batch_idx))

        def on_train_batch_end(self, outputs, batch, batch_idx):
            seen.append(("end", sorted(outputs), batch_idx, outputs["loss"].requires_grad))

    make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=0).fit(Batches())
    assert seen == [("start", (8, 32), 0), ("end", ["loss"], 0, False),
                    ("start", (8, 32), 1), ("end", ["loss"], 1, False)]


# ---------------------------------------------------------------- the order of the main hooks in fit
def recorder(calls, base=ToyModel, **methods):
    """A module whose hooks append their names to ``calls`` (after running), and a callback that does the same."""
    names = ["on_fit_start", "on_train_start", "on_train_epoch_start", "on_train_batch_start", "training_step",
             "on_before_zero_grad", "optimizer_zero_grad", "on_before_backward", "on_after_backward",
             "on_before_optimizer_step", "on_train_batch_end", "on_validation_start", "on_validation_epoch_start",
             "validation_step", "on_validation_epoch_end", "on_validation_end", "on_train_epoch_end",
             "lr_scheduler_step", "on_train_end", "on_fit_end"] + list(methods)

    def wrap(name):
        inner = methods.get(name) or getattr(base, name)

        def hook(self, *args, **kwargs):
            out = inner(self, *args, **kwargs)
            calls.append(name)
            return out
        return hook

    def callback_hook(name):
        def hook(self, trainer, module, *args):
            calls.append(f"Callback.{name}")
        return hook

    on_both = [n for n in names if n.startswith("on_") and hasattr(surge.Callback, n)]
    Recorder = type("Recorder", (surge.Callback,), {n: callback_hook(n) for n in on_both})
    Model = type("Model", (base,), {n: wrap(n) for n in names})
    return Model(), Recorder()


def both(*names):
    return [x for n in names for x in (f"Callback.{n}", n)]


def validation(batches):
    return (both("on_validation_start", "on_validation_epoch_start") + ["validation_step"] * batches
            + both("on_validation_epoch_end", "on_validation_end"))


def test_fit_hook_order_with_own_optimizer_step_and_clipping(tmp_path):
    calls = []

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        optimizer.step(closure=optimizer_closure)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    model, callback = recorder(calls, optimizer_step=optimizer_step,
                               configure_gradient_clipping=configure_gradient_clipping)
    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1, callbacks=[callback])
    trainer.fit(model)
    batch = (both("on_train_batch_start") + ["training_step"] + both("on_before_zero_grad")
             + ["optimizer_zero_grad"] + both("on_before_backward", "on_after_backward", "on_before_optimizer_step")
             + ["configure_gradient_clipping", "optimizer_step"] + both("on_train_batch_end"))
    # Lightning's order (its tests/tests_pytorch/models/test_hooks.py), but for one known difference: an
    # epoch-interval scheduler steps after on_train_epoch_end here, inside the last batch there (docs/lightning.md).
    expected = (both("on_fit_start", "on_train_start", "on_train_epoch_start") + batch * 2 + validation(1)
                + both("on_train_epoch_end") + ["lr_scheduler_step"] + both("on_train_end", "on_fit_end"))
    assert calls == expected
    assert trainer.global_step == 2


def test_manual_optimization_runs_backward_hooks_in_manual_backward(tmp_path):
    calls = []

    class Manual(ToyModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            loss = self.loss(batch)
            self.manual_backward(loss)
            calls.append("after manual_backward")
            opt.step()
            self.log("after_step", 1.0)
            return loss

    model, callback = recorder(calls, base=Manual)
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0, callbacks=[callback])
    trainer.fit(model)
    batch = calls[calls.index("Callback.on_train_batch_start"):calls.index("Callback.on_train_batch_end")]
    assert batch == both("on_train_batch_start", "on_before_backward", "on_after_backward") + [
        "after manual_backward"] + both("on_before_optimizer_step") + ["training_step"]
    assert trainer.global_step == 1


# ---------------------------------------------------------------- optimizer_step and clipping overrides
def test_own_optimizer_step_warms_up_the_learning_rate(tmp_path):
    lrs = []

    class WarmUp(ToyModel):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            for group in optimizer.param_groups:
                group["lr"] = 0.1 * (self.trainer.global_step + 1) / 4
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step(closure=optimizer_closure)

    trainer = make_trainer(tmp_path, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(WarmUp())
    assert lrs == pytest.approx([0.025, 0.05, 0.075])
    assert trainer.global_step == 3


def test_own_optimizer_step_that_skips_steps_counts_only_real_ones(tmp_path):
    class EveryOther(ToyModel):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            if batch_idx % 2 == 0:
                optimizer.step(closure=optimizer_closure)
            else:
                optimizer_closure()  # the loss is computed; no step

    model = EveryOther()
    before = model.layer.weight.detach().clone()
    trainer = make_trainer(tmp_path, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(model)
    assert trainer.global_step == 2
    assert not torch.equal(before, model.layer.weight)


def test_own_gradient_clipping_gets_the_trainers_values(tmp_path):
    seen = []

    class Clip(ToyModel):
        def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
            seen.append((gradient_clip_val, gradient_clip_algorithm))
            self.clip_gradients(optimizer, gradient_clip_val=1e-6, gradient_clip_algorithm="value")
            grads = [p.grad for p in self.parameters()]
            seen.append(max(float(g.abs().max()) for g in grads))

    make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0, gradient_clip_val=5.0).fit(Clip())
    assert seen[0] == (5.0, "norm")
    assert seen[1] <= 1e-6


# ---------------------------------------------------------------- warnings Lightning users expect
def test_training_step_returning_none_warns_once(tmp_path):
    class Skips(ToyModel):
        def training_step(self, batch, batch_idx):
            return None

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.warns(UserWarning, match=r"`training_step` returned `None`: this batch has no backward") as record:
        trainer = make_trainer(tmp_path, limit_train_batches=3, limit_val_batches=0)
        trainer.fit(Skips())
    assert trainer.global_step == 3  # each step still counts, as in Lightning
    assert sum("returned `None`" in str(w.message) for w in record) == 1


def test_fewer_batches_than_log_every_n_steps_warns(tmp_path):
    logger = surge.loggers.CSVLogger(tmp_path)
    with pytest.warns(PossibleUserWarning, match=r"The number of training batches \(2\) is smaller than the "
                                                 r"logging interval Trainer\(log_every_n_steps=50\)"):
        make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=0, logger=logger).fit(ToyModel())
    with warnings.catch_warnings():  # no logger, or few enough steps: nothing to say
        warnings.filterwarnings("error", message=".*logging interval")
        make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=0).fit(ToyModel())
        make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=0, logger=surge.loggers.CSVLogger(tmp_path),
                     log_every_n_steps=2).fit(ToyModel())


def test_on_gpu():
    model = ToyModel()
    assert model.on_gpu is False
    if torch.cuda.is_available():
        assert model.cuda().on_gpu is True
