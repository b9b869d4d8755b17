"""StochasticWeightAveraging: the average against one computed by hand from the weights each epoch ended with,
SWALR's learning rates against the annealing formula, BatchNorm statistics against those computed by hand from
the averaged weights, and a resumed fit against an uninterrupted one."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.callbacks import Callback, ModelCheckpoint, StochasticWeightAveraging
from surge.utils import MisconfigurationError

from launch_env import clear_launch_vars


def data(n=24, batch_size=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)  # 3 batches


class Net(surge.Module):
    def __init__(self, batch_norm=False, scheduler=None):
        super().__init__()
        torch.manual_seed(1)
        self.first = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3) if batch_norm else nn.Identity()
        self.last = nn.Linear(3, 1)
        self.scheduler = scheduler

    def forward(self, x):
        return self.last(torch.relu(self.bn(self.first(x))))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        if self.scheduler == "step":
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]
        return opt


class Record(Callback):
    """The weights each epoch ended with (before SWA's work at train end) and the LR each epoch ran with."""

    def __init__(self):
        self.start = None
        self.ends, self.lrs = [], []

    def on_train_start(self, trainer, module):
        self.start = {k: v.detach().clone() for k, v in module.named_parameters()}

    def on_train_epoch_start(self, trainer, module):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer, module):
        self.ends.append({k: v.detach().clone() for k, v in module.named_parameters()})


def fit(tmp_path, module, callbacks, max_epochs, ckpt_path=None):
    trainer = surge.Trainer(default_root_dir=str(tmp_path), max_epochs=max_epochs, callbacks=callbacks, logger=False,
                            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, data(), ckpt_path=ckpt_path)
    return trainer


def mean_of(weights):
    return {k: torch.stack([w[k] for w in weights]).mean(0) for k in weights[0]}


def test_average_is_the_mean_of_the_epoch_end_weights_and_ends_in_the_module(tmp_path):
    rec = Record()
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=3, annealing_epochs=2, annealing_strategy="linear")
    module = Net()
    fit(tmp_path, module, [rec, swa], max_epochs=5)
    # swa_epoch_start=3 (1-based): averaged at the start of epochs 2, 3, 4 (0-based), i.e. the weights that
    # epochs 1, 2 and 3 ended with.
    expected = mean_of(rec.ends[1:4])
    for name, param in module.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=0, atol=1e-6)
        assert not torch.equal(param.detach(), rec.ends[-1][name])  # not just the last weights
    assert int(swa.n_averaged) == 3
    # SWALR from epoch 2 on, linear over 2 epochs from 0.1 to 0.01: 0.1, halfway, 0.01.
    assert rec.lrs == pytest.approx([0.1, 0.1, 0.1, 0.055, 0.01])


def test_float_start_and_swalr_replaces_the_modules_scheduler(tmp_path):
    rec = Record()
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=0.6, annealing_epochs=2, annealing_strategy="linear")
    module = Net(scheduler="step")
    trainer = fit(tmp_path, module, [rec, swa], max_epochs=5)  # int(0.6 * 5) = 3: as above
    # StepLR halves the LR for epochs 0, 1; SWALR starts from the 0.025 it left and anneals to 0.01.
    assert rec.lrs == pytest.approx([0.1, 0.05, 0.025, 0.5 * 0.01 + 0.5 * 0.025, 0.01])
    assert type(trainer.lr_scheduler_configs[0].scheduler).__name__ == "SWALR"
    expected = mean_of(rec.ends[1:4])
    for name, param in module.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=0, atol=1e-6)


def test_custom_avg_fn_and_start_at_first_epoch_includes_initial_weights(tmp_path):
    rec = Record()
    ema = lambda avg, cur, n: 0.5 * avg + 0.5 * cur  # noqa: E731
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=1, avg_fn=ema)
    module = Net()
    fit(tmp_path, module, [rec, swa], max_epochs=3)
    # Folded at the start of epochs 0, 1, 2: the initial weights, then those epochs 0 and 1 ended with.
    for name, param in module.named_parameters():
        hand = rec.start[name]
        for w in rec.ends[:2]:
            hand = 0.5 * hand + 0.5 * w[name]
        torch.testing.assert_close(param.detach(), hand, rtol=0, atol=1e-6)


def test_batch_norm_statistics_are_recomputed_from_the_averaged_weights(tmp_path):
    rec = Record()
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2)
    module = Net(batch_norm=True)
    fit(tmp_path, module, [rec, swa], max_epochs=4)
    avg = mean_of(rec.ends[0:3])
    for name, param in module.named_parameters():
        torch.testing.assert_close(param.detach(), avg[name], rtol=0, atol=1e-6)
    # By hand: the first layer's outputs under the averaged weights, one batch at a time; momentum None means
    # the running values are the plain mean over batches of each batch's mean and unbiased variance.
    means, variances = [], []
    for x, _ in data():
        h = x @ avg["first.weight"].T + avg["first.bias"]
        means.append(h.mean(0))
        variances.append(h.var(0, unbiased=True))
    torch.testing.assert_close(module.bn.running_mean, torch.stack(means).mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(module.bn.running_var, torch.stack(variances).mean(0), rtol=0, atol=1e-6)
    assert int(module.bn.num_batches_tracked) == 3
    assert module.bn.momentum == 0.1  # given back after the pass


def test_early_stop_keeps_the_trained_weights(tmp_path):
    class StopAt(Callback):
        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 2:
                trainer.should_stop = True

    rec = Record()
    module = Net()
    fit(tmp_path, module, [rec, StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2), StopAt()], max_epochs=5)
    for name, param in module.named_parameters():  # fit did not run all its epochs: no average goes in
        assert torch.equal(param.detach(), rec.ends[-1][name])


@pytest.mark.parametrize("scheduler", [None, "step"])
def test_resume_inside_the_averaging_matches_an_uninterrupted_fit(tmp_path, scheduler):
    swa = lambda: StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2, annealing_epochs=3)  # noqa: E731
    whole = Net(scheduler=scheduler)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, every_n_epochs=1)
    rec_whole = Record()
    fit(tmp_path / "a", whole, [rec_whole, swa(), ckpt], max_epochs=6)
    resumed = Net(scheduler=scheduler)
    rec = Record()
    path = tmp_path / "ck" / "epoch=2-step=9.ckpt"  # epoch 2 ended: two weights averaged, SWALR running
    assert torch.load(path, weights_only=False)["callbacks"]["StochasticWeightAveraging"]["n_averaged"] == 2
    callback = swa()
    fit(tmp_path / "b", resumed, [rec, callback], max_epochs=6, ckpt_path=str(path))
    assert rec.lrs == pytest.approx(rec_whole.lrs[3:])
    assert int(callback.n_averaged) == 5
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)


def test_arguments_are_checked():
    with pytest.raises(MisconfigurationError, match="swa_epoch_start"):
        StochasticWeightAveraging(swa_lrs=0.1, swa_epoch_start=0)
    with pytest.raises(MisconfigurationError, match="swa_epoch_start"):
        StochasticWeightAveraging(swa_lrs=0.1, swa_epoch_start=1.5)
    with pytest.raises(MisconfigurationError, match="swa_lrs"):
        StochasticWeightAveraging(swa_lrs=-0.1)
    with pytest.raises(MisconfigurationError, match="swa_lrs"):
        StochasticWeightAveraging(swa_lrs=[0.1, 1])
    with pytest.raises(MisconfigurationError, match="avg_fn"):
        StochasticWeightAveraging(swa_lrs=0.1, avg_fn=3)
    with pytest.raises(MisconfigurationError, match="device"):
        StochasticWeightAveraging(swa_lrs=0.1, device=0)


def test_two_optimizers_are_refused(tmp_path):
    class Two(Net):
        def training_step(self, batch, batch_idx, optimizer_idx):
            return super().training_step(batch, batch_idx)

        def configure_optimizers(self):
            return [torch.optim.SGD(self.first.parameters(), lr=0.1), torch.optim.SGD(self.last.parameters(), lr=0.1)]

    with pytest.raises(MisconfigurationError, match="1 `optimizer`"):
        fit(tmp_path, Two(), [StochasticWeightAveraging(swa_lrs=0.1)], max_epochs=2)


def test_ddp_two_processes_average_as_one(tmp_path, monkeypatch):
    # Global batch 8: 4 per rank on two spawned gloo ranks, 8 in one process; the same weights each epoch, so the
    # same average. (Net is at module level so that the spawned processes can import it.)
    clear_launch_vars(monkeypatch)
    swa = lambda: StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2)  # noqa: E731
    quiet = dict(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                 enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    spread = Net()
    surge.Trainer(default_root_dir=str(tmp_path / "ddp"), strategy="ddp_spawn", devices=2, callbacks=[swa()],
                  **quiet).fit(spread, data(batch_size=4))
    single, rec = Net(), Record()
    surge.Trainer(default_root_dir=str(tmp_path / "one"), devices=1, callbacks=[rec, swa()], **quiet).fit(
        single, data())
    expected = mean_of(rec.ends[0:3])
    for (name, a), b in zip(single.named_parameters(), spread.parameters()):
        torch.testing.assert_close(a.detach(), expected[name], rtol=0, atol=1e-6)
        torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=1e-5, msg=name)
        assert (b.detach() - rec.ends[-1][name]).abs().max() > 1e-4  # the average came back, not the last weights


def test_ddp_batch_norm_statistics_are_the_mean_over_every_ranks_batches(tmp_path, monkeypatch):
    # Each rank runs the BN pass over its own shard (every other sample, in batches of 4); the statistics every
    # rank ends with are the mean over all six batches, computed here by hand from the averaged weights.
    clear_launch_vars(monkeypatch)
    module = Net(batch_norm=True)
    surge.Trainer(default_root_dir=str(tmp_path), strategy="ddp_spawn", devices=2, accelerator="cpu", max_epochs=3,
                  callbacks=[StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1)], logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  num_sanity_val_steps=0).fit(module, data(batch_size=4))
    w = dict(module.named_parameters())
    x = torch.cat([b[0] for b in data()])
    means, variances = [], []
    for rank in (0, 1):
        shard = x[rank::2]
        for i in range(0, len(shard), 4):
            h = (shard[i:i + 4] @ w["first.weight"].T + w["first.bias"]).detach()
            means.append(h.mean(0))
            variances.append(h.var(0, unbiased=True))
    assert len(means) == 6
    torch.testing.assert_close(module.bn.running_mean, torch.stack(means).mean(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(module.bn.running_var, torch.stack(variances).mean(0), rtol=0, atol=1e-6)
    assert int(module.bn.num_batches_tracked) == 6


def test_lightning_names_on_lightnings_boring_model(tmp_path):
    import surge.lightning as pl
    from surge.lightning.demos.boring_classes import BoringModel

    model = BoringModel()  # SGD with a StepLR, as Lightning's
    rec = Record()
    trainer = pl.Trainer(default_root_dir=str(tmp_path), max_epochs=3, limit_train_batches=4, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=[rec, pl.callbacks.StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=2)])
    trainer.fit(model)
    expected = mean_of(rec.ends[0:2])
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=0, atol=1e-6)
    assert type(trainer.lr_scheduler_configs[0].scheduler).__name__ == "SWALR"
