"""Manual optimisation (``automatic_optimization = False``) against the same plain PyTorch loop."""
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from surge import Module, Trainer

from launch_env import clear_launch_vars


def make_trainer(**kwargs):
    base = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)
    base.update(kwargs)
    return Trainer(**base)


def data(n=48):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x ** 2).sum(1, keepdim=True))


def assert_same_weights(a, b, atol=1e-6):
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=0, msg=f"parameter {k} differs")


class Manual(Module):
    def __init__(self, clip=None, with_sched=False, every=1):
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        self.clip, self.with_sched, self.every = clip, with_sched, every
        self.global_steps = []

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.manual_backward(loss / self.every)
        if (batch_idx + 1) % self.every == 0:
            if self.clip:
                self.clip_gradients(opt, gradient_clip_val=self.clip, gradient_clip_algorithm="norm")
            opt.step()
            opt.zero_grad()
            if self.with_sched:
                self.lr_schedulers().step()
        self.global_steps.append(self.global_step)
        self.log("loss", loss)
        return loss  # returned values are fine under manual optimisation; nothing is stepped for them

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.parameters(), lr=0.01)
        if not self.with_sched:
            return opt
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)]


def plain(model, ds, epochs, clip=None, with_sched=False, every=1):
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) if with_sched else None
    for _ in range(epochs):
        for i, (x, y) in enumerate(DataLoader(ds, batch_size=8)):
            (F.mse_loss(model.net(x), y) / every).backward()
            if (i + 1) % every == 0:
                if clip:
                    nn.utils.clip_grad_norm_(list(model.parameters()), clip)
                opt.step()
                opt.zero_grad()
                if sched:
                    sched.step()
    return opt


@pytest.mark.parametrize("kwargs", [{}, {"clip": 0.5}, {"with_sched": True}, {"every": 2}])
def test_manual_matches_plain_loop(kwargs):
    ds = data()
    model = Manual(**kwargs)
    reference = copy.deepcopy(model)
    trainer = make_trainer(max_epochs=2)
    trainer.fit(model, DataLoader(ds, batch_size=8))
    ref_opt = plain(reference, ds, 2, **kwargs)
    assert_same_weights(model, reference)
    every = kwargs.get("every", 1)
    assert trainer.global_step == 12 // every  # counts optimizer steps, not batches
    # global_step is updated by opt.step() right away
    assert model.global_steps[:4] == ([1, 2, 3, 4] if every == 1 else [0, 1, 1, 2])
    assert trainer.optimizers[0].param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    if kwargs.get("with_sched"):
        # the Trainer does not step schedulers itself under manual optimisation
        assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 12
        assert ref_opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 6)


def test_manual_clip_gradients_really_clips():
    norms = []

    class Probe(Manual):
        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            x, y = batch
            self.manual_backward(F.mse_loss(self.net(x), y) * 100)
            self.clip_gradients(opt, gradient_clip_val=0.1)
            norms.append(torch.cat([p.grad.flatten() for p in self.parameters()]).norm().item())
            opt.step()
            opt.zero_grad()

    make_trainer(max_epochs=1, limit_train_batches=3).fit(Probe(), DataLoader(data(), batch_size=8))
    assert norms == pytest.approx([0.1] * 3, rel=1e-4)


def test_manual_optimizers_are_wrapped_and_unwrapped_on_request():
    seen = {}

    class Probe(Manual):
        def training_step(self, batch, batch_idx):
            seen["wrapped"] = self.optimizers()
            seen["raw"] = self.optimizers(use_surge_optimizer=False)
            seen["sched"] = self.lr_schedulers()
            return None

    trainer = make_trainer(max_epochs=1, limit_train_batches=1)
    trainer.fit(Probe(), DataLoader(data(), batch_size=8))
    assert seen["raw"] is trainer.optimizers[0]
    assert seen["wrapped"].optimizer is trainer.optimizers[0]
    assert seen["wrapped"].param_groups is trainer.optimizers[0].param_groups
    assert seen["sched"] is None
    assert trainer.global_step == 0  # nothing stepped


def test_manual_step_with_closure():
    class Closure(Manual):
        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            x, y = batch

            def closure():
                opt.zero_grad()
                loss = F.mse_loss(self.net(x), y)
                self.manual_backward(loss)
                return loss

            opt.step(closure=closure)

    ds = data()
    model = Closure()
    reference = copy.deepcopy(model)
    make_trainer(max_epochs=1).fit(model, DataLoader(ds, batch_size=8))
    plain(reference, ds, 1)
    assert_same_weights(model, reference)


class ScaledSGD(torch.optim.SGD):
    """An optimizer whose step takes an extra keyword argument."""

    def step(self, closure=None, scale=1.0):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(scale)
        super().step()
        return loss


@pytest.mark.parametrize("with_closure", [False, True])
@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
def test_manual_step_keyword_arguments_reach_the_optimizer(with_closure, precision):
    class Scaled(Manual):
        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            x, y = batch

            def closure():
                loss = F.mse_loss(self.net(x), y)
                self.manual_backward(loss)
                return loss

            if with_closure:
                opt.step(closure=closure, scale=0.0)
            else:
                closure()
                opt.step(scale=0.0)  # every gradient zeroed by the optimizer itself: nothing moves
            opt.zero_grad()

        def configure_optimizers(self):
            return ScaledSGD(self.parameters(), lr=0.1)

    model = Scaled()
    before = copy.deepcopy(model)
    trainer = make_trainer(max_epochs=1, precision=precision)
    trainer.fit(model, DataLoader(data(), batch_size=8))
    assert trainer.global_step == 6
    assert_same_weights(model, before, atol=0)


# ---------------------------------------------------------------------------------------- a tiny GAN
class ManualGAN(Module):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(2)
        self.gen = nn.Linear(2, 2)
        self.disc = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))

    @staticmethod
    def losses(gen, disc, z, real):
        ones, zeros = torch.ones(len(z), 1), torch.zeros(len(z), 1)
        g_loss = lambda: F.binary_cross_entropy_with_logits(disc(gen(z)), ones)  # noqa: E731
        d_loss = lambda: (F.binary_cross_entropy_with_logits(disc(real), ones)  # noqa: E731
                          + F.binary_cross_entropy_with_logits(disc(gen(z).detach()), zeros))
        return g_loss, d_loss

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers()
        g_loss, d_loss = self.losses(self.gen, self.disc, *batch)
        with self.toggled_optimizer(opt_d):
            opt_d.zero_grad()
            self.manual_backward(d_loss())
            opt_d.step()
            # only the discriminator requires grad in its turn
            assert not any(p.requires_grad for p in self.gen.parameters())
        with self.toggled_optimizer(opt_g):
            opt_g.zero_grad()
            self.manual_backward(g_loss())
            opt_g.step()
        sched_g.step()
        sched_d.step()

    def configure_optimizers(self):
        opt_g = torch.optim.Adam(self.gen.parameters(), lr=0.02, betas=(0.5, 0.999))
        opt_d = torch.optim.SGD(self.disc.parameters(), lr=0.1, momentum=0.5)
        return [opt_g, opt_d], [torch.optim.lr_scheduler.ExponentialLR(opt_g, 0.9),
                                torch.optim.lr_scheduler.ExponentialLR(opt_d, 0.95)]


def test_manual_two_optimizer_gan_matches_plain_loop():
    g = torch.Generator().manual_seed(1)
    ds = TensorDataset(torch.randn(40, 2, generator=g), torch.randn(40, 2, generator=g) + 3)
    model = ManualGAN()
    reference = copy.deepcopy(model)
    trainer = make_trainer(max_epochs=2)
    trainer.fit(model, DataLoader(ds, batch_size=8))
    assert trainer.global_step == 2 * 5 * 2  # two optimizer steps per batch

    opt_g = torch.optim.Adam(reference.gen.parameters(), lr=0.02, betas=(0.5, 0.999))
    opt_d = torch.optim.SGD(reference.disc.parameters(), lr=0.1, momentum=0.5)
    sg = torch.optim.lr_scheduler.ExponentialLR(opt_g, 0.9)
    sd = torch.optim.lr_scheduler.ExponentialLR(opt_d, 0.95)
    for _ in range(2):
        for z, real in DataLoader(ds, batch_size=8):
            g_loss, d_loss = ManualGAN.losses(reference.gen, reference.disc, z, real)
            opt_d.zero_grad()
            d_loss().backward()
            opt_d.step()
            opt_g.zero_grad()
            g_loss().backward()
            opt_g.step()
            sg.step()
            sd.step()
    assert_same_weights(model, reference)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.02 * 0.9 ** 10)
    assert all(p.requires_grad for p in model.parameters())


def test_manual_max_steps_counts_optimizer_steps():
    trainer = make_trainer(max_steps=7)
    trainer.fit(ManualGAN(), DataLoader(TensorDataset(torch.randn(80, 2), torch.randn(80, 2)), batch_size=8))
    # two steps per batch: fit stops after the batch that reaches 7 or more
    assert trainer.global_step == 8


def test_manual_lbfgs_closure_is_passed_to_the_optimizer():
    """LBFGS evaluates the closure several times per step: opt.step(closure=...) must hand it over."""
    calls = []

    class LBFGSModel(Manual):
        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            x, y = batch

            def closure():
                calls.append(self.global_step)
                opt.zero_grad()
                loss = F.mse_loss(self.net(x), y)
                self.manual_backward(loss)
                return loss

            opt.step(closure=closure)

        def configure_optimizers(self):
            return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=4)

    ds = data(16)
    model = LBFGSModel()
    reference = copy.deepcopy(model)
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, DataLoader(ds, batch_size=8))
    assert trainer.global_step == 2
    assert len(calls) > 2  # the closure ran more than once per step

    opt = torch.optim.LBFGS(reference.parameters(), lr=0.5, max_iter=4)
    for x, y in DataLoader(ds, batch_size=8):
        def ref_closure():
            opt.zero_grad()
            loss = F.mse_loss(reference.net(x), y)
            loss.backward()
            return loss

        opt.step(ref_closure)
    assert_same_weights(model, reference)


def test_manual_closure_runs_before_clipping():
    norms = []

    class Probe(Manual):
        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            x, y = batch

            def closure():
                opt.zero_grad()
                loss = F.mse_loss(self.net(x), y) * 100
                self.manual_backward(loss)
                return loss

            opt.step(closure=closure)

        def on_before_optimizer_step(self, optimizer):
            norms.append(all(p.grad is not None for p in self.parameters()))

    trainer = make_trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(Probe(), DataLoader(data(), batch_size=8))
    assert norms == [True, True]  # the hook sees the closure's gradients


def test_manual_with_accumulate_grad_batches_is_an_error():
    from surge.utils import MisconfigurationError

    with pytest.raises(MisconfigurationError, match="accumulate_grad_batches"):
        make_trainer(max_epochs=1, accumulate_grad_batches=2).fit(Manual(), DataLoader(data(), batch_size=8))


# ---------------------------------------------------------------------------------------- strategies that cannot
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "pipeline"])
def test_manual_optimization_under_ddp_fsdp_or_pipeline_is_a_clear_error(strategy, monkeypatch):
    # Under DDP the second step crashed inside DDP's forward; under FSDP it trained on the wrong
    # gradients without a word: fit refuses before the first batch, naming the strategy and the reason.
    import torch.distributed as dist

    from surge.demos.gpt import GPTConfig, GPTModule, stdlib_text_loader
    from surge.launch import find_free_port
    from surge.utils import MisconfigurationError

    class Manual(GPTModule):
        def __init__(self):
            super().__init__(GPTConfig.tiny(n_layer=2))
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(super().training_step(batch, batch_idx))
            opt.step()

    clear_launch_vars(monkeypatch)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(find_free_port()))
    trainer = make_trainer(strategy=strategy, max_steps=2)
    try:
        with pytest.raises(MisconfigurationError, match=rf"Manual sets automatic_optimization = False, which "
                                                        rf"strategy='{strategy}' cannot train yet: .+ Use automatic"):
            trainer.fit(Manual(), stdlib_text_loader(16, batch_size=8, limit=32))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
