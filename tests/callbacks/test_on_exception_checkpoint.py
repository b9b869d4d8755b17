"""OnExceptionCheckpoint: the file an error leaves holds the run at that moment, and a resume from it ends where
a run without the error ends."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.callbacks import OnExceptionCheckpoint

X = torch.randn(16, 3, generator=torch.Generator().manual_seed(2))
Y = X.sum(1, keepdim=True)


def loader():
    return DataLoader(TensorDataset(X, Y), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5))


class Failing(surge.Module):
    """Raises in ``training_step`` at (epoch, batch) ``fail_at``; records the weights just before."""

    def __init__(self, fail_at=None):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(3, 1)
        self.fail_at = fail_at
        self.weights_at_failure = None

    def training_step(self, batch, batch_idx):
        if (self.current_epoch, batch_idx) == self.fail_at:
            self.weights_at_failure = {k: v.detach().clone() for k, v in self.state_dict().items()}
            raise RuntimeError("the data went bad")
        x, y = batch
        return F.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def trainer(callbacks, tmp_path):
    return surge.Trainer(max_epochs=3, callbacks=callbacks, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))


def test_filename_cannot_be_empty(tmp_path):
    with pytest.raises(ValueError, match="The filename cannot be empty"):
        OnExceptionCheckpoint(tmp_path, filename="")


def test_ckpt_path(tmp_path):
    assert OnExceptionCheckpoint(tmp_path).ckpt_path == os.path.join(str(tmp_path), "on_exception.ckpt")
    assert OnExceptionCheckpoint(str(tmp_path), "crash").ckpt_path == os.path.join(str(tmp_path), "crash.ckpt")


def test_an_error_in_fit_saves_the_run_and_the_file_resumes_it_exactly(tmp_path):
    folder = tmp_path / "ckpts"
    callback = OnExceptionCheckpoint(folder)
    model = Failing(fail_at=(1, 2))
    with pytest.raises(RuntimeError, match="the data went bad"):
        trainer([callback], tmp_path).fit(model, loader())
    path = folder / "on_exception.ckpt"
    assert os.listdir(folder) == ["on_exception.ckpt"]
    ckpt = torch.load(path, weights_only=False)
    # 4 batches in epoch 0 and 2 in epoch 1 were trained before the failing third batch of epoch 1
    assert ckpt["global_step"] == 6 and ckpt["epoch"] == 1
    for name, value in model.weights_at_failure.items():
        torch.testing.assert_close(ckpt["state_dict"][name], value, rtol=0, atol=0)
    assert ckpt["optimizer_states"][0]["state"]  # momentum buffers: a real training state

    # The resumed run ends exactly where a run without the error ends; its success removes the file.
    resumed = Failing()
    trainer([OnExceptionCheckpoint(folder)], tmp_path).fit(resumed, loader(), ckpt_path=str(path))
    uninterrupted = Failing()
    trainer([], tmp_path).fit(uninterrupted, loader())
    for (name, got), want in zip(resumed.state_dict().items(), uninterrupted.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=name)
    assert not path.exists()


def test_a_successful_fit_leaves_no_file(tmp_path):
    callback = OnExceptionCheckpoint(tmp_path, filename="crash")
    t = trainer([callback], tmp_path)
    t.fit(Failing(), loader())
    assert t.global_step == 12 and not os.path.exists(callback.ckpt_path)


def test_keyboard_interrupt_saves_too(tmp_path):
    class Interrupted(Failing):
        def on_train_batch_start(self, batch, batch_idx):
            if self.global_step == 5:
                raise KeyboardInterrupt

    callback = OnExceptionCheckpoint(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        trainer([callback], tmp_path).fit(Interrupted(), loader())
    assert torch.load(callback.ckpt_path, weights_only=False)["global_step"] == 5


def test_a_save_that_fails_keeps_the_runs_own_error(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the folder should be")
    callback = OnExceptionCheckpoint(blocker)
    with pytest.raises(RuntimeError, match="the data went bad"):
        with pytest.warns(UserWarning, match="OnExceptionCheckpoint could not save .*RuntimeError"):
            trainer([callback], tmp_path).fit(Failing(fail_at=(0, 1)), loader())


def test_lightning_module_path():
    from surge.lightning.callbacks import OnExceptionCheckpoint as FromPackage
    from surge.lightning.callbacks.on_exception_checkpoint import OnExceptionCheckpoint as FromModule

    assert FromPackage is FromModule is OnExceptionCheckpoint
