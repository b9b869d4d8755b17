"""Bad input gives one clear error that names the argument or hook, what was expected and what was given."""
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.checkpoint import CheckpointError
from surge.demos.toy import ToyModel, ToyDataset
from surge.utils import MisconfigurationError, SurgeError


def make_trainer(tmp_path, **kwargs):
    kwargs.setdefault("enable_progress_bar", False)
    kwargs.setdefault("enable_model_summary", False)
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("logger", False)
    kwargs.setdefault("num_sanity_val_steps", 0)
    kwargs.setdefault("accelerator", "cpu")
    kwargs.setdefault("max_epochs", 1)
    return surge.Trainer(default_root_dir=tmp_path, **kwargs)


# ---------------------------------------------------------------- the module
class NoTrainingStep(surge.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(32, 2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(ToyDataset(32, 16), batch_size=8)


class NoOptimizers(surge.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(32, 2)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def train_dataloader(self):
        return DataLoader(ToyDataset(32, 16), batch_size=8)


def test_module_without_training_step(tmp_path):
    with pytest.raises(MisconfigurationError, match=r"NoTrainingStep does not define training_step\(\)"):
        make_trainer(tmp_path).fit(NoTrainingStep())


def test_module_without_configure_optimizers(tmp_path):
    with pytest.raises(MisconfigurationError, match=r"NoOptimizers does not define configure_optimizers\(\)"):
        make_trainer(tmp_path).fit(NoOptimizers())


def test_plain_nn_module(tmp_path):
    with pytest.raises(MisconfigurationError,
                       match=r"trainer.fit\(\) expects a surge.Module as its model, got Linear \(a plain torch.nn.Module"):
        make_trainer(tmp_path).fit(nn.Linear(2, 2))
    with pytest.raises(MisconfigurationError, match=r"expects a surge.Module as its model, got str"):
        make_trainer(tmp_path).test("model")


class Returns(ToyModel):
    def __init__(self, what):
        super().__init__()
        self.what = what

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        if self.what == "str":
            return "loss"
        if self.what == "vector":
            return self(batch).mean(0)
        if self.what == "dict":
            return {"los": loss}
        if self.what == "detached":
            return loss.detach()
        return loss


@pytest.mark.parametrize("what, message", [
    ("str", r"training_step must return a loss tensor, a dict with 'loss', or None; got str"),
    ("vector", r"training_step returned a tensor of shape \(2,\); the loss must be a scalar"),
    ("dict", r"training_step returned a dict without a 'loss' key \(keys: \['los'\]\)"),
    ("detached", r"training_step returned a loss that does not require grad"),
])
def test_training_step_bad_return(tmp_path, what, message):
    with pytest.raises(SurgeError, match=message):
        make_trainer(tmp_path, limit_val_batches=0).fit(Returns(what))


def test_configure_optimizers_returning_a_string(tmp_path):
    class StrOpt(ToyModel):
        def configure_optimizers(self):
            return "adam"

    with pytest.raises(SurgeError, match=r"configure_optimizers returned (a )?str.*; expected an optimizer"):
        make_trainer(tmp_path).fit(StrOpt())


def test_configure_optimizers_returning_none(tmp_path):
    class NoneOpt(ToyModel):
        def configure_optimizers(self):
            return None

    with pytest.raises(SurgeError, match=r"NoneOpt.configure_optimizers returned None; return an optimizer"):
        make_trainer(tmp_path).fit(NoneOpt())


def test_nan_loss_names_the_step(tmp_path):
    class GoesNaN(ToyModel):
        def training_step(self, batch, batch_idx):
            loss = self.loss(batch)
            if self.global_step == 3:
                loss = loss * float("nan")
            return loss

    model = GoesNaN()
    trainer = make_trainer(tmp_path, limit_val_batches=0)
    with pytest.raises(SurgeError, match=r"(NaN|nan).*step 3\b"):
        trainer.fit(model)
    assert trainer.global_step == 3
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad loss never reached the weights


def test_inf_loss_names_the_step(tmp_path):
    class GoesInf(ToyModel):
        def training_step(self, batch, batch_idx):
            return self.loss(batch) * (math.inf if self.global_step == 1 else 1.0)

    with pytest.raises(SurgeError, match=r"inf.*step 1\b"):
        make_trainer(tmp_path, limit_val_batches=0).fit(GoesInf())


# ---------------------------------------------------------------- Trainer arguments
def test_unknown_argument_suggests_close_match(tmp_path):
    with pytest.raises(MisconfigurationError, match=r"unknown argument 'max_epoch'; did you mean max_epochs"):
        surge.Trainer(max_epoch=3)


def test_unknown_argument_without_close_match_lists_arguments(tmp_path):
    with pytest.raises(MisconfigurationError, match=r"unknown argument 'zzz'; the arguments are: .*max_epochs"):
        surge.Trainer(zzz=1)


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "17"}, r"precision='17'.*(16-mixed|32-true)"),
    ({"max_epochs": -5}, r"max_epochs must be an int >= -1 or None, got -5"),
    ({"max_steps": -2}, r"max_steps must be an int >= -1, got -2"),
    ({"max_epochs": 2.5}, r"max_epochs must be an int >= -1 or None, got 2.5"),
    ({"accumulate_grad_batches": 0}, r"accumulate_grad_batches must be an int >= 1, got 0"),
    ({"gradient_clip_algorithm": "foo"}, r"gradient_clip_algorithm='foo' is not supported; choose one of 'norm', 'value'"),
    ({"gradient_clip_val": -1.0}, r"gradient_clip_val must be a number >= 0 or None, got -1.0"),
    ({"limit_val_batches": 1.5}, r"limit_val_batches as a float is a fraction in \[0.0, 1.0\], got 1.5"),
    ({"limit_train_batches": -1}, r"limit_train_batches must be >= 0, got -1"),
    ({"limit_test_batches": "all"}, r"limit_test_batches must be an int \(batches\) or a float"),
    ({"val_check_interval": 0}, r"val_check_interval must be > 0"),
    ({"num_sanity_val_steps": -2}, r"num_sanity_val_steps must be an int >= -1, got -2"),
    ({"log_every_n_steps": 0}, r"log_every_n_steps must be an int >= 1, got 0"),
    ({"check_val_every_n_epoch": 0}, r"check_val_every_n_epoch must be an int >= 1 or None, got 0"),
    ({"fast_dev_run": -1}, r"fast_dev_run must be True, False or an int >= 0, got -1"),
    ({"enable_checkpointing": "yes"}, r"enable_checkpointing must be True or False, got 'yes'"),
    ({"logger": "csv"}, r"logger must be True, False, a surge Logger or a list of them, got str"),
    ({"callbacks": [object()]}, r"callbacks must be surge Callback instances, got object"),
    ({"default_root_dir": 5}, r"default_root_dir must be a path, got 5"),
])
def test_bad_trainer_arguments(tmp_path, kwargs, message):
    kwargs.setdefault("default_root_dir", tmp_path)
    with pytest.raises(MisconfigurationError, match=message):
        surge.Trainer(**kwargs)


# ---------------------------------------------------------------- data
def test_empty_train_dataloader(tmp_path):
    # As in Lightning: a warning that names the loader, and fit trains nothing (no error).
    empty = DataLoader(TensorDataset(torch.zeros(0, 32)), batch_size=4)
    trainer = make_trainer(tmp_path)
    with pytest.warns(UserWarning, match=r"the train_dataloaders argument has no batches, so fit trains nothing"):
        trainer.fit(ToyModel(), train_dataloaders=empty)
    assert trainer.global_step == 0


def test_train_dataloader_not_iterable(tmp_path):
    with pytest.raises(MisconfigurationError, match=r"train_dataloaders argument gave a int, which is not iterable"):
        make_trainer(tmp_path).fit(ToyModel(), train_dataloaders=5)


def test_limit_fraction_rounding_to_zero(tmp_path):
    with pytest.raises(MisconfigurationError, match=r"limit_train_batches=0.01 of a dataloader of 8 batches is 0"):
        make_trainer(tmp_path, limit_train_batches=0.01).fit(ToyModel())


def test_test_without_test_step(tmp_path):
    class NoTest(ToyModel):
        test_step = None

    with pytest.raises(MisconfigurationError, match=r"trainer.test\(\) needs NoTest.test_step, which is not defined"):
        make_trainer(tmp_path).test(NoTest())


def test_validate_without_model(tmp_path):
    with pytest.raises(MisconfigurationError, match=r"trainer.validate\(\) needs a model"):
        make_trainer(tmp_path).validate()


# ---------------------------------------------------------------- checkpoints
def test_ckpt_path_best_without_best(tmp_path):
    with pytest.raises(MisconfigurationError, match=r'ckpt_path="best" but no best checkpoint exists yet \(checkpointing is disabled\)'):
        make_trainer(tmp_path).test(ToyModel(), ckpt_path="best", verbose=False)
    trainer = make_trainer(tmp_path, enable_checkpointing=True)
    with pytest.raises(MisconfigurationError, match=r'ckpt_path="best" but no best checkpoint exists yet; run fit'):
        trainer.validate(ToyModel(), ckpt_path="best", verbose=False)


def test_ckpt_path_last_without_checkpoint_for_test(tmp_path):
    with pytest.raises(MisconfigurationError, match=r'ckpt_path="last" found no checkpoint'):
        make_trainer(tmp_path).test(ToyModel(), ckpt_path="last", verbose=False)


def test_ckpt_path_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"does not exist"):
        make_trainer(tmp_path).test(ToyModel(), ckpt_path=str(tmp_path / "nope.ckpt"), verbose=False)


def test_checkpoint_of_a_plain_tensor(tmp_path):
    path = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match=r"is not a surge checkpoint: expected a dict with a 'state_dict' key, got Tensor"):
        make_trainer(tmp_path).fit(ToyModel(), ckpt_path=str(path))
    with pytest.raises(CheckpointError, match=r"is not a surge checkpoint"):
        ToyModel.load_from_checkpoint(path)


def test_checkpoint_of_a_dict_without_state_dict(tmp_path):
    path = tmp_path / "dict.ckpt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"is not a surge checkpoint.*got dict with keys \['weights'\]"):
        make_trainer(tmp_path).test(ToyModel(), ckpt_path=str(path), verbose=False)


@pytest.mark.parametrize("text", ["these are not the weights you are looking for\n", "hello", "0.5,0.2\n1,2\n",
                                  "{'a': 1}\n", ""])
def test_checkpoint_that_is_a_text_file(tmp_path, text):
    path = tmp_path / "notes.ckpt"
    path.write_text(text)
    with pytest.raises(CheckpointError, match=r"notes.ckpt' is truncated or corrupt and cannot be read"):
        make_trainer(tmp_path).fit(ToyModel(), ckpt_path=str(path))


def saved_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(ToyModel())
    path = tmp_path / "real.ckpt"
    trainer.save_checkpoint(str(path))
    return path


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.9])
def test_truncated_checkpoint(tmp_path, keep):
    path = saved_checkpoint(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"real.ckpt' is truncated or corrupt and cannot be read"):
        make_trainer(tmp_path).fit(ToyModel(), ckpt_path=str(path))
    with pytest.raises(CheckpointError, match=r"truncated or corrupt"):
        ToyModel.load_from_checkpoint(path)


def test_checkpoint_of_another_model(tmp_path):
    path = saved_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"(?s)does not fit ToyModel.*shape mismatches.*layer.weight"):
        make_trainer(tmp_path).test(ToyModel(size=16), ckpt_path=str(path), verbose=False)


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "obj": ToyDataset(2, 2)}, path)
    with pytest.raises(CheckpointError, match=r"refuses it"):
        make_trainer(tmp_path).test(ToyModel(), ckpt_path=str(path), verbose=False)


def test_weights_only_checkpoint_cannot_resume(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(ToyModel())
    path = tmp_path / "w.ckpt"
    trainer.save_checkpoint(str(path), weights_only=True)
    with pytest.raises(CheckpointError, match=r"holds weights only"):
        make_trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(ToyModel(), ckpt_path=str(path))
