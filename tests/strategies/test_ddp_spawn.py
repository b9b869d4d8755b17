"""strategy="ddp_spawn": workers started from this very process with torch.multiprocessing.

The test process plays the notebook: it calls fit / test / predict, two fresh CPU processes do the
work with gloo, and rank 0's results and weights come back here. Checked against one process on the
same global batch, as for "ddp".
"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.strategies.ddp import DDPSpawn
from surge.utils import MisconfigurationError

from launch_env import clear_launch_vars

QUIET = dict(enable_progress_bar=False, enable_model_summary=False)


class Net(surge.Module):
    # At module level, so that the spawned processes can import it (a class in a notebook cell could not be).
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss, sync_dist=True)
        return loss

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.mse_loss(self(x), y), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def data(n):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x[:, :1] * 2 - x[:, 1:2] + 0.1 * torch.randn(n, 1, generator=g))


@pytest.fixture
def clean_env(monkeypatch):
    clear_launch_vars(monkeypatch)


def test_ddp_spawn_trains_like_one_process_and_brings_results_back(tmp_path, clean_env):
    # Global batch 16: 8 per rank on two spawned ranks, 16 in the single reference process.
    model = Net()
    trainer = surge.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=20, logger=False,
                            default_root_dir=str(tmp_path / "spawn"), **QUIET)
    assert isinstance(trainer.strategy, DDPSpawn)
    trainer.fit(model, DataLoader(data(320), batch_size=8))
    assert "RANK" not in os.environ and not torch.distributed.is_initialized()  # the workers did it all
    assert trainer.state.finished and trainer.state.fn == "fit"  # as after a fit in this process

    reference = Net()
    single = surge.Trainer(accelerator="cpu", devices=1, max_steps=20, logger=False,
                           default_root_dir=str(tmp_path / "single"), **QUIET)
    single.fit(reference, DataLoader(data(320), batch_size=16))

    # The trained weights are back in the caller's module; so are the counters, metrics and callback state.
    worst = max((a - b).abs().max().item() for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert worst < 1e-5
    assert trainer.global_step == 20 and trainer.current_epoch == single.current_epoch
    assert "train_loss" in trainer.callback_metrics
    best = trainer.checkpoint_callback.best_model_path
    assert os.path.isfile(best) and best.startswith(str(tmp_path / "spawn"))

    # validate/test metrics and predictions come back too, the same as one process's.
    tested = trainer.test(model, DataLoader(data(48), batch_size=12), ckpt_path="best", verbose=False)
    expected = single.test(reference, DataLoader(data(48), batch_size=24), verbose=False)
    assert tested[0]["test_loss"] == pytest.approx(expected[0]["test_loss"], abs=1e-5)
    predicted = trainer.predict(model, DataLoader(data(45), batch_size=5))
    assert [len(p) for p in predicted] == [10, 10, 10, 10, 5]
    assert trainer.state.finished and trainer.state.fn == "predict"
    assert (torch.cat(predicted) - torch.cat(single.predict(reference, DataLoader(data(45), batch_size=10)))).abs().max() < 1e-5


class Unpicklable(Net):
    def __init__(self):
        super().__init__()
        self.scale = lambda x: 2 * x  # a lambda cannot be pickled


def test_unpicklable_module_is_a_clear_error(clean_env):
    trainer = surge.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=1, logger=False, **QUIET)
    with pytest.raises(MisconfigurationError, match="sends the module to new processes by pickling it"):
        trainer.fit(Unpicklable(), DataLoader(data(32), batch_size=8))


def test_module_defined_in_a_notebook_is_a_clear_error(clean_env, monkeypatch):
    main = sys.modules["__main__"]
    notebook_net = type("NotebookNet", (Net,), {"__module__": "__main__"})
    monkeypatch.setattr(main, "NotebookNet", notebook_net, raising=False)
    monkeypatch.delattr(main, "__file__", raising=False)  # what a notebook kernel's __main__ looks like
    trainer = surge.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, max_steps=1, logger=False, **QUIET)
    with pytest.raises(MisconfigurationError, match="notebook or interactive session: NotebookNet"):
        trainer.fit(notebook_net(), DataLoader(data(32), batch_size=8))
