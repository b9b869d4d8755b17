"""Precisions and speed defaults on a CUDA GPU. Skipped without CUDA.

Written in a session without a GPU: these tests have not been run yet (see docs/benchmarks.md, "GPU").
"""
import pytest
import torch
from torch.utils.data import DataLoader

from surge import Trainer
from surge.demos.toy import ToyModel, ToyDataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PRECISIONS = ["32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true"]


def make_trainer(**kwargs):
    base = dict(accelerator="cuda", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    base.update(kwargs)
    return Trainer(**base)


class Recorder(ToyModel):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.losses = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses.append(loss.detach().float().clone())
        return loss

    def train_dataloader(self):  # equal batches (cuda_graphs) and a worker (no num_workers=0 warning)
        return DataLoader(ToyDataset(self.hparams.size, 64, seed=1), batch_size=self.hparams.batch_size,
                          drop_last=True)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_trains_the_boring_model(precision):
    if precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = Recorder()
    trainer = make_trainer(max_epochs=3, precision=precision)
    trainer.fit(model)
    assert model.device.type == "cuda"
    losses = torch.stack(model.losses).cpu()
    assert torch.isfinite(losses).all()
    assert losses[-8:].mean() < losses[:8].mean()


def test_16_mixed_skips_an_injected_inf_step():
    class InfAt2(Recorder):
        def on_after_backward(self):
            if self.trainer.global_step == 2:
                self.layer.weight.grad[0, 0] = float("inf")

    model = InfAt2()
    trainer = make_trainer(max_epochs=1, precision="16-mixed")
    trainer.fit(model)
    assert trainer.strategy.precision.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_on_a_gpu_without_bf16_is_a_construction_error(monkeypatch):
    from surge.utils import MisconfigurationError

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(MisconfigurationError, match="has no bf16"):
        make_trainer(precision="bf16-mixed")


def test_adam_becomes_fused_and_matches_the_unfused_one():
    class AdamModel(Recorder):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    torch.manual_seed(0)
    fused = AdamModel()
    trainer = make_trainer(max_epochs=2)
    trainer.fit(fused)
    assert trainer.optimizers[0].param_groups[0]["fused"] is True
    torch.manual_seed(0)
    plain = AdamModel()
    trainer = make_trainer(max_epochs=2, fuse_optimizers=False)
    trainer.fit(plain)
    assert trainer.optimizers[0].param_groups[0]["fused"] is None
    torch.testing.assert_close(torch.stack(fused.losses), torch.stack(plain.losses), rtol=1e-4, atol=1e-5)


def test_tf32_default_follows_the_architecture(capsys):
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        make_trainer(max_steps=1).fit(Recorder())
        ampere = torch.cuda.get_device_capability()[0] >= 8
        assert (torch.get_float32_matmul_precision() == "high") == ampere
        assert ("TF32" in capsys.readouterr().out) == ampere
        torch.set_float32_matmul_precision("highest")
        make_trainer(max_steps=1, allow_tf32=False).fit(Recorder())
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.set_float32_matmul_precision(previous)


def test_prefetcher_yields_the_loader_batches_on_the_device():
    from surge.prefetch import CUDAPrefetcher

    loader = DataLoader(ToyDataset(32, 40), batch_size=8)
    got = list(CUDAPrefetcher(loader, torch.device("cuda", 0)))
    assert len(got) == 5 and all(b.is_cuda for b in got)
    for a, b in zip(got, loader):
        torch.testing.assert_close(a.cpu(), b)


def test_num_workers_0_warns_once_naming_the_fix():
    with pytest.warns(UserWarning, match="num_workers=4"):
        make_trainer(max_epochs=2).fit(ToyModel())


def test_compile_on_cuda_trains_like_eager():
    torch.manual_seed(0)
    eager = Recorder()
    make_trainer(max_epochs=2).fit(eager)
    torch.manual_seed(0)
    compiled = Recorder()
    make_trainer(max_epochs=2, compile=True).fit(compiled)
    torch.testing.assert_close(torch.stack(compiled.losses), torch.stack(eager.losses), rtol=1e-4, atol=1e-5)


def test_cuda_graphs_train_like_eager_and_refuse_a_new_shape():
    from surge.utils import SurgeError

    torch.manual_seed(0)
    eager = Recorder()
    make_trainer(max_epochs=2).fit(eager)
    torch.manual_seed(0)
    graphed = Recorder()
    make_trainer(max_epochs=2, cuda_graphs=True).fit(graphed)
    torch.testing.assert_close(torch.stack(graphed.losses), torch.stack(eager.losses), rtol=1e-4, atol=1e-5)

    class Ragged(Recorder):
        def train_dataloader(self):
            return DataLoader(ToyDataset(32, 60), batch_size=8)  # last batch has 4 rows

    with pytest.raises(SurgeError, match="drop_last=True"):
        make_trainer(max_epochs=1, cuda_graphs=True).fit(Ragged())
