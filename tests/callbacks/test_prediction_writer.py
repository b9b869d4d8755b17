"""BasePredictionWriter: the files a writer leaves, with each prediction next to the sample indices it came from."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.callbacks import BasePredictionWriter
from surge.utils import MisconfigurationError


X = torch.arange(10, dtype=torch.float32).unsqueeze(1)  # sample i is the number i


class Doubler(surge.Module):
    """predict_step gives twice the input: a prediction shows which samples it was made from."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.layer.weight.fill_(2.0)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self.layer(batch[0])


class FileWriter(BasePredictionWriter):
    def __init__(self, folder, write_interval):
        super().__init__(write_interval)
        self.folder = folder

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        torch.save({"prediction": prediction, "indices": batch_indices},
                   os.path.join(self.folder, f"batch_{dataloader_idx}_{batch_idx}.pt"))

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        torch.save({"predictions": predictions, "indices": batch_indices}, os.path.join(self.folder, "epoch.pt"))


def predict(writer, loaders, **kw):
    t = surge.Trainer(callbacks=[writer], logger=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu", devices=1)
    return t.predict(Doubler(), loaders, **kw)


ORDER = [7, 2, 9, 0, 4, 8, 1, 6, 3, 5]


def shuffled(batch_size=4):
    """A loader whose sampler gives the samples in ORDER (a list is a sampler)."""
    return DataLoader(TensorDataset(X), batch_size=batch_size, sampler=ORDER)


def test_write_interval_is_checked():
    with pytest.raises(MisconfigurationError, match="`write_interval` should be one of"):
        BasePredictionWriter("step")


def test_per_batch_files_hold_each_prediction_with_its_sample_indices(tmp_path):
    writer = FileWriter(str(tmp_path), "batch")
    returned = predict(writer, shuffled())
    assert sorted(os.listdir(tmp_path)) == ["batch_0_0.pt", "batch_0_1.pt", "batch_0_2.pt"]  # no epoch file
    seen = []
    for i in range(3):
        saved = torch.load(tmp_path / f"batch_0_{i}.pt")
        indices = saved["indices"]
        assert indices == ORDER[4 * i: 4 * i + 4]  # the sampler's indices, batch by batch (4, 4, 2)
        assert saved["prediction"].squeeze(1).tolist() == [2.0 * j for j in indices]
        torch.testing.assert_close(saved["prediction"], returned[i])
        seen += indices
    assert sorted(seen) == list(range(10))


def test_per_epoch_file_is_written_with_return_predictions_false(tmp_path):
    writer = FileWriter(str(tmp_path), "epoch")
    assert predict(writer, shuffled(), return_predictions=False) is None
    assert os.listdir(tmp_path) == ["epoch.pt"]
    saved = torch.load(tmp_path / "epoch.pt")
    assert len(saved["predictions"]) == 3  # one loader: its list of batch outputs
    assert len(saved["indices"]) == 1 and len(saved["indices"][0]) == 3  # per loader, per batch
    for prediction, indices in zip(saved["predictions"], saved["indices"][0]):
        assert prediction.squeeze(1).tolist() == [2.0 * j for j in indices]
    assert sorted(j for batch in saved["indices"][0] for j in batch) == list(range(10))


def test_batch_and_epoch_with_two_loaders(tmp_path):
    writer = FileWriter(str(tmp_path), "batch_and_epoch")
    first = DataLoader(TensorDataset(X[:6]), batch_size=3)
    second = DataLoader(TensorDataset(X[4:]), batch_size=4)  # indices count in that loader's own dataset
    predict(writer, [first, second])
    assert sorted(os.listdir(tmp_path)) == ["batch_0_0.pt", "batch_0_1.pt", "batch_1_0.pt", "batch_1_1.pt", "epoch.pt"]
    assert torch.load(tmp_path / "batch_1_1.pt")["indices"] == [4, 5]
    saved = torch.load(tmp_path / "epoch.pt")
    assert saved["indices"] == [[[0, 1, 2], [3, 4, 5]], [[0, 1, 2, 3], [4, 5]]]
    assert [len(p) for p in saved["predictions"]] == [2, 2]  # a list per loader
    assert saved["predictions"][1][1].squeeze(1).tolist() == [16.0, 18.0]  # samples 8 and 9 of X


def test_a_loader_without_a_sampler_gives_empty_indices(tmp_path):
    writer = FileWriter(str(tmp_path), "batch")
    class Batches:  # an iterable of batches that is no DataLoader: no sampler to read
        def __iter__(self):
            return iter([(X[:5],), (X[5:],)])

        def __len__(self):
            return 2

    batches = Batches()
    with pytest.warns(UserWarning, match="Couldn't infer the batch indices"):
        predict(writer, batches)
    saved = torch.load(tmp_path / "batch_0_1.pt")
    assert saved["indices"] == [] and saved["prediction"].squeeze(1).tolist() == [10.0, 12.0, 14.0, 16.0, 18.0]


def test_the_base_class_says_what_to_override(tmp_path):
    with pytest.raises(NotImplementedError, match="write_on_batch_end"):
        predict(BasePredictionWriter("batch"), shuffled())


def test_lightning_module_path():
    from surge.lightning.callbacks import BasePredictionWriter as FromPackage
    from surge.lightning.callbacks.prediction_writer import BasePredictionWriter as FromModule, WriteInterval

    assert FromPackage is FromModule is BasePredictionWriter
    assert WriteInterval("batch_and_epoch").on_batch and WriteInterval("batch_and_epoch").on_epoch


DDP_SCRIPT = r'''
import os, sys
import torch
from torch.utils.data import DataLoader, TensorDataset
import surge
sys.path.insert(0, sys.argv[2])
from test_prediction_writer import Doubler, FileWriter, X

out = sys.argv[1]
folder = os.path.join(out, f"rank{os.environ.get('RANK', '0')}")
os.makedirs(folder, exist_ok=True)
trainer = surge.Trainer(strategy="ddp", accelerator="cpu", devices=2, callbacks=[FileWriter(folder, "batch_and_epoch")],
                        logger=False, enable_progress_bar=False, enable_model_summary=False)
assert trainer.predict(Doubler(), DataLoader(TensorDataset(X), batch_size=2), return_predictions=False) is None
'''


def test_under_ddp_each_rank_writes_its_own_share(tmp_path):
    script = tmp_path / "predict_ddp.py"
    script.write_text(DDP_SCRIPT)
    from launch_env import child_env  # here: the script's own process imports this module without tests/ on its path

    env = child_env()
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), os.path.dirname(__file__)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shares = []
    for rank in (0, 1):
        folder = tmp_path / f"rank{rank}"
        # 10 samples over 2 ranks: 5 each, in batches of 2, 2, 1
        assert sorted(os.listdir(folder)) == ["batch_0_0.pt", "batch_0_1.pt", "batch_0_2.pt", "epoch.pt"]
        saved = torch.load(folder / "epoch.pt")
        indices = [j for batch in saved["indices"][0] for j in batch]
        assert indices == list(range(rank, 10, 2))  # the DistributedSampler's share of this rank
        assert torch.cat(saved["predictions"]).squeeze(1).tolist() == [2.0 * j for j in indices]
        assert torch.load(folder / "batch_0_2.pt")["indices"] == indices[-1:]
        shares += indices
    assert sorted(shares) == list(range(10))  # together the ranks cover the data set once
