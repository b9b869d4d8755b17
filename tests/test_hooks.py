"""The order in which the Trainer calls hooks, on the module and on callbacks (see docs/hooks.md).

The order follows PyTorch Lightning 2.x: for each hook, callbacks first, then the module; the batch
moves to the device before ``on_*_batch_start``; gradients are zeroed right before the first backward
of an accumulation window; the epoch's validation runs before ``on_train_epoch_end``; epoch-interval
LR schedulers step after it.
"""
import pytest
import torch

import surge
from surge.callbacks.base import Callback
from surge.demos.toy import ToyModel
from surge.module_hooks import ModuleHooks

CALLBACK_HOOKS = [name for name in vars(Callback)
                  if (name.startswith("on_") or name in ("setup", "teardown")) and callable(vars(Callback)[name])]
MODULE_HOOKS = [name for name in vars(ModuleHooks) if name.startswith("on_")] + [
    "setup", "teardown", "configure_model", "configure_optimizers", "optimizer_zero_grad", "lr_scheduler_step",
    "training_step", "validation_step", "test_step", "predict_step", "transfer_batch_to_device",
]


def recorders():
    """A callback and a ToyModel whose every hook appends its name to one shared list."""
    calls = []

    def callback_hook(name):
        def hook(self, trainer, module, *args, **kwargs):
            calls.append(f"Callback.{name}")
        return hook

    def module_hook(name):
        original = getattr(ToyModel, name)

        def hook(self, *args, **kwargs):
            calls.append(name)
            return original(self, *args, **kwargs)
        return hook

    RecordingCallback = type("RecordingCallback", (Callback,), {n: callback_hook(n) for n in CALLBACK_HOOKS})
    RecordingModel = type("RecordingModel", (ToyModel,), {n: module_hook(n) for n in MODULE_HOOKS})
    return calls, RecordingCallback(), RecordingModel()


def both(*names):
    """Each hook called on the callback, then on the module."""
    out = []
    for name in names:
        out += [f"Callback.{name}", name]
    return out


TRANSFER = ["on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"]


def eval_epoch(prefix, batches):
    # The recording model overrides on_<stage>_model_train, so it is called (otherwise the modes are restored).
    out = [f"on_{prefix}_model_eval"] + both(f"on_{prefix}_start", f"on_{prefix}_epoch_start")
    for _ in range(batches):
        out += TRANSFER + both(f"on_{prefix}_batch_start") + [f"{prefix}_step"] + both(f"on_{prefix}_batch_end")
    return out + both(f"on_{prefix}_epoch_end", f"on_{prefix}_end") + [f"on_{prefix}_model_train"]


def train_batch():
    return (TRANSFER + both("on_train_batch_start") + ["training_step"]
            + both("on_before_zero_grad") + ["optimizer_zero_grad"]
            + both("on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_train_batch_end"))


def expected_fit(epochs, train_batches, val_batches, sanity):
    out = ["Callback.setup", "setup", "configure_model", "configure_optimizers"] + both("on_fit_start")
    if sanity:
        out += ["Callback.on_sanity_check_start"] + eval_epoch("validation", sanity) + ["Callback.on_sanity_check_end"]
    out += both("on_train_start")
    for _ in range(epochs):
        out += both("on_train_epoch_start")
        for _ in range(train_batches):
            out += train_batch()
        out += eval_epoch("validation", val_batches)
        out += both("on_train_epoch_end") + ["lr_scheduler_step"]  # ToyModel's StepLR steps per epoch
    return out + both("on_train_end", "on_fit_end") + ["Callback.teardown", "teardown"]


def expected_eval(stage, prefix, batches):
    return ["Callback.setup", "setup", "configure_model"] + eval_epoch(prefix, batches) + ["Callback.teardown", "teardown"]


def expected_predict(batches):
    out = ["Callback.setup", "setup", "configure_model", "on_predict_model_eval"] + both("on_predict_start",
                                                                                        "on_predict_epoch_start")
    for _ in range(batches):
        out += TRANSFER + both("on_predict_batch_start") + ["predict_step"] + both("on_predict_batch_end")
    return out + both("on_predict_epoch_end", "on_predict_end") + ["Callback.teardown", "teardown"]


def make_trainer(tmp_path, callback, **kwargs):
    return surge.Trainer(default_root_dir=tmp_path, callbacks=[callback], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", **kwargs)


def test_fit_hook_order(tmp_path):
    calls, callback, model = recorders()
    trainer = make_trainer(tmp_path, callback, max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                           num_sanity_val_steps=1)
    trainer.fit(model)
    assert calls == expected_fit(epochs=2, train_batches=2, val_batches=1, sanity=1)


def test_fit_hook_order_without_sanity_check(tmp_path):
    calls, callback, model = recorders()
    trainer = make_trainer(tmp_path, callback, max_epochs=1, limit_train_batches=3, limit_val_batches=2,
                           num_sanity_val_steps=0)
    trainer.fit(model)
    assert calls == expected_fit(epochs=1, train_batches=3, val_batches=2, sanity=0)


def test_accumulation_zeroes_once_per_window(tmp_path):
    calls, callback, model = recorders()
    trainer = make_trainer(tmp_path, callback, max_epochs=1, limit_train_batches=4, limit_val_batches=0,
                           accumulate_grad_batches=2)
    trainer.fit(model)
    steps = [c for c in calls if c in ("training_step", "optimizer_zero_grad", "on_before_backward",
                                       "on_before_optimizer_step")]
    window = ["training_step", "optimizer_zero_grad", "on_before_backward",
              "training_step", "on_before_backward", "on_before_optimizer_step"]
    assert steps == window * 2


@pytest.mark.parametrize("stage, prefix", [("validate", "validation"), ("test", "test")])
def test_evaluation_hook_order(tmp_path, stage, prefix):
    calls, callback, model = recorders()
    trainer = make_trainer(tmp_path, callback, **{f"limit_{'val' if stage == 'validate' else 'test'}_batches": 2})
    getattr(trainer, stage)(model, verbose=False)
    assert calls == expected_eval(stage, prefix, 2)


def test_predict_hook_order(tmp_path):
    calls, callback, model = recorders()
    trainer = make_trainer(tmp_path, callback, limit_predict_batches=2)
    trainer.predict(model)
    assert calls == expected_predict(2)


def test_hook_order_across_stages_on_one_trainer(tmp_path):
    calls, callback, model = recorders()
    trainer = make_trainer(tmp_path, callback, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                           limit_test_batches=1, limit_predict_batches=1, num_sanity_val_steps=0)
    trainer.fit(model)
    n = len(calls)
    trainer.validate(model, verbose=False)
    trainer.test(model, verbose=False)
    trainer.predict(model)
    assert calls[n:] == (expected_eval("validate", "validation", 1) + expected_eval("test", "test", 1)
                         + expected_predict(1))


def test_hooks_see_the_right_state(tmp_path):
    """What the trainer reports inside hooks: stage flags, epoch and step counters, module mode."""
    seen = []

    class Probe(Callback):
        def on_sanity_check_start(self, trainer, module):
            seen.append(("sanity", trainer.sanity_checking, trainer.global_step))

        def on_train_epoch_start(self, trainer, module):
            seen.append(("train_epoch_start", trainer.current_epoch, trainer.global_step, module.training))

        def on_validation_epoch_start(self, trainer, module):
            seen.append(("val_epoch_start", trainer.sanity_checking, module.training, torch.is_grad_enabled()))

        def on_train_epoch_end(self, trainer, module):
            seen.append(("train_epoch_end", trainer.current_epoch, trainer.global_step, module.training))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            assert isinstance(outputs, dict) and not outputs["loss"].requires_grad

    trainer = make_trainer(tmp_path, Probe(), max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                           num_sanity_val_steps=1)
    trainer.fit(ToyModel())
    assert seen == [
        ("sanity", True, 0),
        ("val_epoch_start", True, False, False),
        ("train_epoch_start", 0, 0, True),
        ("val_epoch_start", False, False, False),
        ("train_epoch_end", 0, 2, True),
        ("train_epoch_start", 1, 2, True),
        ("val_epoch_start", False, False, False),
        ("train_epoch_end", 1, 4, True),
    ]


def test_on_train_batch_start_minus_one_skips_rest_of_epoch(tmp_path):
    class SkipAfterOne(ToyModel):
        steps = 0

        def on_train_batch_start(self, batch, batch_idx):
            return -1 if batch_idx == 1 else None

        def training_step(self, batch, batch_idx):
            self.steps += 1
            return super().training_step(batch, batch_idx)

    model = SkipAfterOne()
    trainer = surge.Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, max_epochs=2, limit_val_batches=0)
    trainer.fit(model)
    assert model.steps == 2  # one batch per epoch
    assert trainer.current_epoch == 2


def test_exception_reaches_on_exception(tmp_path):
    seen = []

    class Catch(Callback):
        def on_exception(self, trainer, module, exception):
            seen.append(type(exception).__name__)

    class Boom(ToyModel):
        def training_step(self, batch, batch_idx):
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        make_trainer(tmp_path, Catch(), max_epochs=1).fit(Boom())
    assert seen == ["KeyError"]


# ---------------------------------------------------------------- the module's backward and mode hooks
class Dropping(ToyModel):
    """A ToyModel with a dropout layer and a frozen 'backbone' kept in eval mode during training."""

    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)
        self.backbone = torch.nn.BatchNorm1d(32)
        self.seen = []

    def on_train_epoch_start(self):
        self.backbone.eval()  # e.g. a frozen, pretrained part: its statistics must not move

    def forward(self, x):
        return self.layer(self.drop(self.backbone(x)))

    def training_step(self, batch, batch_idx):
        self.seen.append(("train", self.training, self.drop.training, self.backbone.training))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self.seen.append(("val", self.training, self.drop.training, self.backbone.training))
        return super().validation_step(batch, batch_idx)


def test_module_backward_hook_runs_every_backward(tmp_path):
    losses = []

    class OwnBackward(ToyModel):
        def backward(self, loss, *args, **kwargs):
            losses.append(float(loss))
            loss.backward(*args, **kwargs)

    torch.manual_seed(0)
    model = OwnBackward()
    torch.manual_seed(0)
    reference = ToyModel()
    for m in (model, reference):
        make_trainer(tmp_path, Callback(), max_epochs=1, limit_train_batches=3, limit_val_batches=0).fit(m)
    assert len(losses) == 3
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)  # the default hook is loss.backward(): same training


def test_module_backward_hook_gets_manual_backward_arguments_and_the_scaled_loss(tmp_path):
    seen = []

    class Manual(ToyModel):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            loss = self(batch).sum()
            self.manual_backward(loss, retain_graph=True)
            self.manual_backward(loss)  # the graph is still there: retain_graph reached loss.backward
            seen.append(float(loss))
            opt.step()
            opt.zero_grad()

        def backward(self, loss, *args, **kwargs):
            seen.append((float(loss), kwargs))
            super().backward(loss, *args, **kwargs)

    make_trainer(tmp_path, Callback(), max_epochs=1, limit_train_batches=1, limit_val_batches=0,
                 precision="16-mixed").fit(Manual())
    (scaled, first), (_, second), loss = seen
    assert first == {"retain_graph": True} and second == {}
    assert scaled == pytest.approx(loss * 2.0 ** 16, rel=1e-3)  # GradScaler's initial scale, applied before the hook


def test_an_error_in_the_backward_hook_reaches_on_exception_and_its_checkpoint(tmp_path):
    class Troubled(ToyModel):
        def backward(self, loss, *args, **kwargs):
            if self.current_epoch == 1:
                raise RuntimeError("Trouble!")
            loss.backward()

    ckpt = surge.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="exception", save_on_exception=True,
                                           every_n_epochs=7)
    trainer = surge.Trainer(default_root_dir=tmp_path, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                            enable_model_summary=False, max_epochs=3, limit_train_batches=2, limit_val_batches=0)
    with pytest.raises(RuntimeError, match="Trouble!"):
        trainer.fit(Troubled())
    assert torch.load(tmp_path / "exception.ckpt", weights_only=False)["global_step"] == 2


def test_validation_restores_each_submodule_mode(tmp_path):
    model = Dropping()
    make_trainer(tmp_path, Callback(), max_epochs=1, limit_train_batches=4, limit_val_batches=1, num_sanity_val_steps=0,
                 val_check_interval=2).fit(model)
    # Training: dropout on, the backbone frozen in eval; validation: all in eval; after it, as before.
    assert model.seen == [("train", True, True, False)] * 2 + [("val", False, False, False)] \
        + [("train", True, True, False)] * 2 + [("val", False, False, False)]


def test_model_eval_and_train_hooks_decide_the_modes(tmp_path):
    class MCDropout(Dropping):
        def on_validation_model_eval(self):
            self.eval()
            self.drop.train()  # Monte Carlo dropout: sample while validating

        def on_validation_model_train(self):
            self.train()  # everything back to training, the backbone too

        def on_test_model_eval(self):
            super().on_test_model_eval()
            self.seen.append("test eval")

    model = MCDropout()
    trainer = make_trainer(tmp_path, Callback(), max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                           num_sanity_val_steps=0, val_check_interval=1)
    trainer.fit(model)
    assert model.seen == [("train", True, True, False), ("val", False, True, False),
                          ("train", True, True, True), ("val", False, True, False)]
    model.seen.clear()
    model.backbone.eval()
    trainer.test(model, ToyModel().val_dataloader(), verbose=False)
    assert model.seen == ["test eval"]
    # on_test_model_train is not overridden: each submodule is back in its mode from before the test
    assert model.training and model.drop.training and not model.backbone.training
