"""Precision on the CPU: parameter dtypes, autocast, and the 16-mixed grad scaler skipping bad steps."""
import copy
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from surge import Module, Trainer
from surge.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision, normalize_precision
from surge.utils import MisconfigurationError


def make_trainer(**kwargs):
    base = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)
    base.update(kwargs)
    return Trainer(**base)


def loader(n=64, batch_size=16, scale=1.0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-1.0], [2.0], [0.5]]) * scale
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def small_loader():
    # small targets keep the fp16 gradients times the scaler's 65536 finite: no step skips by itself
    return loader(scale=0.02)


class Model(Module):
    def __init__(self, lr=0.05):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
        self.lr = lr
        self.seen = []  # (input dtype, activation dtype, param dtype) per step
        self.losses = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        h = self.net[0](x)
        out = self.net[2](self.net[1](h))
        self.seen.append((x.dtype, h.dtype, self.net[0].weight.dtype))
        loss = F.mse_loss(out.to(y.dtype), y)
        self.losses.append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x).to(y.dtype), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def fp16_cpu_supported():
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            out = nn.Linear(2, 2)(torch.randn(1, 2))
        torch.amp.GradScaler("cpu")
        return out.dtype is torch.float16
    except Exception:  # noqa: BLE001  (any failure means: not on this torch)
        return False


needs_fp16_cpu = pytest.mark.skipif(not fp16_cpu_supported(), reason="this torch has no fp16 autocast/GradScaler on CPU")


# ---------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("value,name", [(32, "32-true"), ("32", "32-true"), ("32-true", "32-true"),
                                        (16, "16-mixed"), ("16", "16-mixed"), ("bf16", "bf16-mixed"),
                                        ("BF16-Mixed", "bf16-mixed"), (64, "64-true"), ("64", "64-true"),
                                        ("bf16-true", "bf16-true"), ("16-true", "16-true")])
def test_legacy_names_map_to_canonical(value, name):
    assert normalize_precision(value) == name
    assert make_trainer(precision=value).precision == name


@pytest.mark.parametrize("bad", ["17", 17, True, None, "fp16", 16.0])
def test_invalid_precision_errors(bad):
    with pytest.raises(MisconfigurationError, match="precision"):
        make_trainer(precision=bad)


@pytest.mark.parametrize("name,cls", [("32-true", Precision), ("64-true", DoublePrecision),
                                      ("bf16-mixed", MixedPrecision), ("bf16-true", HalfPrecision)])
def test_strategy_gets_the_precision_object(name, cls):
    p = make_trainer(precision=name).strategy.precision
    assert type(p) is cls and p.name == name


# ---------------------------------------------------------------------------------------- training
def test_32_true_matches_plain_loop():
    model = Model()
    reference = copy.deepcopy(model)
    make_trainer(max_epochs=2, precision="32-true").fit(model, loader())
    opt = torch.optim.SGD(reference.parameters(), lr=0.05)
    for _ in range(2):
        for x, y in loader():
            opt.zero_grad()
            F.mse_loss(reference.net(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)
    assert model.seen[0] == (torch.float32, torch.float32, torch.float32)


def test_64_true_makes_params_and_inputs_float64():
    model = Model()
    reference = copy.deepcopy(model).double()
    trainer = make_trainer(max_epochs=2, precision="64-true", limit_val_batches=1)
    trainer.fit(model, loader(), loader())
    assert all(p.dtype is torch.float64 for p in model.parameters())
    assert model.seen[0] == (torch.float64, torch.float64, torch.float64)
    assert model.losses[-1] < model.losses[0]
    opt = torch.optim.SGD(reference.parameters(), lr=0.05)
    for _ in range(2):
        for x, y in loader():
            opt.zero_grad()
            F.mse_loss(reference.net(x.double()), y.double()).backward()
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_bf16_mixed_autocasts_on_cpu_and_learns():
    model = Model()
    make_trainer(max_epochs=4, precision="bf16-mixed").fit(model, loader())
    assert model.seen[0] == (torch.float32, torch.bfloat16, torch.float32)  # fp32 master weights
    assert all(p.dtype is torch.float32 for p in model.parameters())
    assert sum(model.losses[-4:]) < 0.5 * sum(model.losses[:4])


def test_bf16_true_makes_params_bf16():
    model = Model(lr=0.02)
    make_trainer(max_epochs=4, precision="bf16-true").fit(model, loader())
    assert all(p.dtype is torch.bfloat16 for p in model.parameters())
    assert model.seen[0][1:] == (torch.bfloat16, torch.bfloat16)
    assert model.seen[0][0] is torch.bfloat16  # floating inputs follow the parameters
    assert sum(model.losses[-4:]) < sum(model.losses[:4])


class AdamModel(Model):
    def __init__(self, eps):
        super().__init__()
        self.eps = eps

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2, eps=self.eps)


def test_16_true_warns_that_adams_default_eps_is_zero_in_float16():
    # Adam's eps=1e-8 is 0 in float16: the first update divides by about 0 and the loss turns NaN
    with pytest.warns(UserWarning, match=r"precision='16-true': Adam\(eps=1e-08\) is below torch.float16's smallest"):
        make_trainer(max_steps=1, precision="16-true").fit(AdamModel(eps=1e-8), loader())
    model = AdamModel(eps=1e-4)  # the fix the warning names: trains, stays finite, no warning
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*smallest normal number")
        make_trainer(max_epochs=8, precision="16-true").fit(model, small_loader())
    assert all(p.dtype is torch.float16 for p in model.parameters())
    assert all(math.isfinite(v) for v in model.losses) and sum(model.losses[-4:]) < sum(model.losses[:4])
    with warnings.catch_warnings():  # bf16 reaches 1e-38: its default eps is fine
        warnings.filterwarnings("error", message=".*smallest normal number")
        make_trainer(max_steps=2, precision="bf16-true").fit(AdamModel(eps=1e-8), loader())


def test_true_precisions_leave_integer_inputs_alone():
    seen = []

    class Emb(Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 3)

        def training_step(self, batch, batch_idx):
            idx, y = batch
            seen.append((idx.dtype, y.dtype))
            return F.mse_loss(self.emb(idx).sum(1).float(), y.float())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    ds = TensorDataset(torch.randint(0, 10, (16,)), torch.randn(16))
    make_trainer(max_epochs=1, precision="64-true").fit(Emb(), DataLoader(ds, batch_size=8))
    assert seen[0] == (torch.int64, torch.float64)


@needs_fp16_cpu
def test_16_mixed_on_cpu_learns_with_a_scaler():
    model = Model(lr=0.2)
    trainer = make_trainer(max_epochs=4, precision="16-mixed")
    trainer.fit(model, small_loader())
    precision = trainer.strategy.precision
    assert precision.scaler is not None
    assert model.seen[0] == (torch.float32, torch.float16, torch.float32)
    assert precision.skipped_steps == 0
    assert sum(model.losses[-4:]) < 0.5 * sum(model.losses[:4])
    assert "scaler" in precision.state_dict()


@needs_fp16_cpu
@pytest.mark.parametrize("clip", [None, 1.0])
def test_16_mixed_skips_a_step_with_inf_gradient(clip):
    snapshots = {}

    class InfAt2(Model):
        def on_after_backward(self):
            if self.trainer.global_step == 2:
                self.net[0].weight.grad[0, 0] = float("inf")

        def on_train_batch_start(self, batch, batch_idx):
            snapshots[batch_idx] = [p.detach().clone() for p in self.parameters()]

    model = InfAt2()
    trainer = make_trainer(max_epochs=1, precision="16-mixed", gradient_clip_val=clip)
    trainer.fit(model, small_loader())
    precision = trainer.strategy.precision
    assert precision.skipped_steps == 1
    # the step taken on batch 2 left every weight as it was; the steps around it did not
    assert all(torch.equal(a, b) for a, b in zip(snapshots[2], snapshots[3]))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert precision.scaler.get_scale() == 2.0 ** 16 * 0.5  # backed off once
    assert trainer.global_step == 4  # a skipped step still counts, as the loop went through it


@needs_fp16_cpu
def test_16_mixed_manual_optimization_uses_the_scaler():
    class ManualInf(Model):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            x, y = batch
            with torch.no_grad():
                before = self.net[0].weight.clone()
            loss = F.mse_loss(self.net(x).float(), y)
            self.manual_backward(loss)
            if batch_idx == 1:
                self.net[0].weight.grad[0, 0] = float("nan")
            opt.step()
            opt.zero_grad()
            self.changed = getattr(self, "changed", []) + [not torch.equal(before, self.net[0].weight)]

    model = ManualInf()
    trainer = make_trainer(max_epochs=1, precision="16-mixed")
    trainer.fit(model, small_loader())
    assert model.changed == [True, False, True, True]
    assert trainer.strategy.precision.skipped_steps == 1


@needs_fp16_cpu
def test_16_mixed_clipping_sees_unscaled_gradients():
    norms = []

    class Probe(Model):
        def configure_optimizers(self):
            opt = super().configure_optimizers()
            # runs inside optimizer.step(): sees the gradients the update uses
            opt.register_step_pre_hook(lambda o, args, kwargs: norms.append(
                torch.cat([p.grad.flatten() for p in self.parameters()]).norm().item()))
            return opt

    trainer = make_trainer(max_epochs=1, precision="16-mixed", gradient_clip_val=0.01)
    trainer.fit(Probe(), small_loader())
    # the scaler's factor (65536) is gone before clipping, so the clipped norm is the true 0.01
    assert norms == pytest.approx([0.01] * 4, rel=1e-3)


@needs_fp16_cpu
def test_16_mixed_manual_closure_and_clipping():
    norms = []

    class ManualClosure(Model):
        def __init__(self):
            super().__init__(lr=0.2)
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            x, y = batch

            def closure():
                opt.zero_grad()
                loss = F.mse_loss(self.net(x).float(), y)
                self.losses.append(loss.item())
                self.manual_backward(loss)
                self.clip_gradients(opt, gradient_clip_val=0.01)
                norms.append(torch.cat([p.grad.flatten() for p in self.parameters()]).norm().item())
                return loss

            opt.step(closure=closure)

    model = ManualClosure()
    trainer = make_trainer(max_epochs=3, precision="16-mixed")
    trainer.fit(model, small_loader())
    assert trainer.strategy.precision.skipped_steps == 0
    assert trainer.global_step == 12
    assert norms == pytest.approx([0.01] * 12, rel=1e-3)  # clipped after unscaling
    assert model.losses[-1] < model.losses[0]


@needs_fp16_cpu
def test_16_mixed_two_optimizers_one_skipping_its_turn():
    """An optimizer whose loss was None for the window is not stepped (the scaler would refuse an
    optimizer without gradients); the other one still steps."""

    class GAN(Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.gen, self.disc = nn.Linear(2, 2), nn.Linear(2, 1)

        def training_step(self, batch, batch_idx, optimizer_idx):
            z, real = batch
            if optimizer_idx == 0:
                return F.binary_cross_entropy_with_logits(self.disc(self.gen(z)).float(), torch.ones(len(z), 1))
            if batch_idx % 2:
                return None
            return F.binary_cross_entropy_with_logits(self.disc(real).float(), torch.ones(len(z), 1))

        def configure_optimizers(self):
            return [torch.optim.SGD(self.gen.parameters(), lr=0.1), torch.optim.SGD(self.disc.parameters(), lr=0.1)]

    steps = {0: 0, 1: 0}

    class Count(GAN):
        def on_before_optimizer_step(self, optimizer):
            steps[0 if optimizer is self.trainer.optimizers[0] else 1] += 1

    ds = TensorDataset(torch.randn(32, 2) * 0.1, torch.randn(32, 2) * 0.1)
    trainer = make_trainer(max_epochs=1, precision="16-mixed", gradient_clip_val=1.0)
    trainer.fit(Count(), DataLoader(ds, batch_size=8))
    assert steps == {0: 4, 1: 4}  # the discriminator's None batches still step (with no gradients)
    assert trainer.global_step == 4
    assert trainer.strategy.precision.skipped_steps == 0
