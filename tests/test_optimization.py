"""Automatic optimisation against plain PyTorch: gradient accumulation, clipping, several optimizers.

Every test trains a tiny model with the Trainer and the same model with a hand-written loop from
the same initial weights and data, then compares the final weights.
"""
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from surge import Module, Trainer


def make_trainer(**kwargs):
    base = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0)
    base.update(kwargs)
    return Trainer(**base)


def regression_data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class Regressor(Module):
    """No batch-dependent layers, so a batch of 32 equals four batches of 8 averaged."""

    def __init__(self, lr=0.1, momentum=0.9):
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.lr, self.momentum = lr, momentum

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


def assert_same_weights(a, b, atol=1e-6):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=0, msg=f"parameter {k} differs")


# ---------------------------------------------------------------------------------------- accumulation
def test_accumulation_equals_large_batch():
    data = regression_data(96)
    model = Regressor()
    reference = copy.deepcopy(model)
    trainer = make_trainer(max_epochs=2, accumulate_grad_batches=4)
    trainer.fit(model, DataLoader(data, batch_size=8))
    assert trainer.global_step == 2 * 3

    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        for x, y in DataLoader(data, batch_size=32):
            opt.zero_grad()
            F.mse_loss(reference(x), y).backward()
            opt.step()
    assert_same_weights(model, reference)
    # Accumulation mattered: stepping every batch of 8 lands elsewhere.
    assert not torch.allclose(model.net[0].weight, Regressor().net[0].weight, atol=1e-3)


def test_accumulation_partial_last_window_steps():
    # 10 batches of 8 with windows of 4: steps after batches 4, 8 and 10 (the last, partial window).
    data = regression_data(80)
    model = Regressor()
    reference = copy.deepcopy(model)
    trainer = make_trainer(max_epochs=3, accumulate_grad_batches=4)
    trainer.fit(model, DataLoader(data, batch_size=8))
    assert trainer.global_step == 3 * 3
    assert trainer.estimated_stepping_batches == 9

    # The loss of every micro-batch is divided by accumulate_grad_batches, the partial window too.
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    steps = 0
    for _ in range(3):
        batches = list(DataLoader(data, batch_size=8))
        for i, (x, y) in enumerate(batches):
            (F.mse_loss(reference(x), y) / 4).backward()
            if (i + 1) % 4 == 0 or i + 1 == len(batches):
                opt.step()
                opt.zero_grad()
                steps += 1
    assert steps == 9
    assert_same_weights(model, reference)


def test_accumulation_with_limit_train_batches_steps_on_last_limited_batch():
    data = regression_data(96)
    model = Regressor()
    reference = copy.deepcopy(model)
    trainer = make_trainer(max_epochs=2, accumulate_grad_batches=4, limit_train_batches=6)
    trainer.fit(model, DataLoader(data, batch_size=8))
    assert trainer.global_step == 2 * 2

    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        for i, (x, y) in enumerate(list(DataLoader(data, batch_size=8))[:6]):
            (F.mse_loss(reference(x), y) / 4).backward()
            if i in (3, 5):
                opt.step()
                opt.zero_grad()
    assert_same_weights(model, reference)


def test_no_grad_leaks_between_windows():
    """Gradients are zeroed between windows: the first backward of a window starts from no gradient."""
    seen = []

    class Probe(Regressor):
        def on_before_backward(self, loss):
            seen.append(all(p.grad is None or not p.grad.any() for p in self.parameters()))

    trainer = make_trainer(max_epochs=1, accumulate_grad_batches=2)
    trainer.fit(Probe(), DataLoader(regression_data(48), batch_size=8))
    # batches 0, 2, 4 start a window (clean grads); 1, 3, 5 are mid-window.
    assert seen == [True, False, True, False, True, False]


# ---------------------------------------------------------------------------------------- clipping
@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_matches_plain_loop(algorithm):
    data = regression_data(64)
    clip = 0.05
    model = Regressor(momentum=0.0)
    reference = copy.deepcopy(model)
    unclipped = copy.deepcopy(model)
    trainer = make_trainer(max_epochs=2, gradient_clip_val=clip, gradient_clip_algorithm=algorithm)
    trainer.fit(model, DataLoader(data, batch_size=16))

    def plain(net, do_clip):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(2):
            for x, y in DataLoader(data, batch_size=16):
                opt.zero_grad()
                F.mse_loss(net(x), y).backward()
                if do_clip and algorithm == "norm":
                    nn.utils.clip_grad_norm_(list(net.parameters()), clip)
                elif do_clip:
                    nn.utils.clip_grad_value_(list(net.parameters()), clip)
                opt.step()

    plain(reference, True)
    plain(unclipped, False)
    assert_same_weights(model, reference, atol=1e-7)
    assert not torch.allclose(model.net[0].weight, unclipped.net[0].weight, atol=1e-4), "clipping had no effect"


def test_clipping_happens_after_on_before_optimizer_step_and_on_accumulated_grads():
    norms = {}

    class Probe(Regressor):
        def on_before_optimizer_step(self, optimizer):
            norms["before"] = torch.cat([p.grad.flatten() for p in self.parameters()]).norm().item()

        def configure_optimizers(self):
            opt = super().configure_optimizers()
            # runs inside optimizer.step(): sees the gradients the update uses
            opt.register_step_pre_hook(lambda o, args, kwargs: norms.setdefault("after", []).append(
                torch.cat([p.grad.flatten() for p in self.parameters()]).norm().item()))
            return opt

    trainer = make_trainer(max_epochs=1, gradient_clip_val=0.01, accumulate_grad_batches=2)
    trainer.fit(Probe(), DataLoader(regression_data(32), batch_size=8))
    assert norms["before"] > 0.01  # the hook saw the unclipped gradient
    assert norms["after"] == pytest.approx([0.01, 0.01], rel=1e-4)


# ---------------------------------------------------------------------------------------- several optimizers
class TinyGAN(Module):
    """A generator and a discriminator trained in turn, each on the loss returned for it."""

    def __init__(self, skip_disc_on_odd=False):
        super().__init__()
        torch.manual_seed(3)
        self.gen = nn.Linear(2, 2)
        self.disc = nn.Linear(2, 1)
        self.skip_disc_on_odd = skip_disc_on_odd
        self.turns = []

    @staticmethod
    def gen_loss(gen, disc, z):
        fake = gen(z)
        return F.binary_cross_entropy_with_logits(disc(fake), torch.ones(len(z), 1))

    @staticmethod
    def disc_loss(gen, disc, z, real):
        fake = gen(z).detach()
        return (F.binary_cross_entropy_with_logits(disc(real), torch.ones(len(z), 1))
                + F.binary_cross_entropy_with_logits(disc(fake), torch.zeros(len(z), 1)))

    def training_step(self, batch, batch_idx, optimizer_idx):
        z, real = batch
        # Only the parameters of the optimizer whose turn it is require grad.
        self.turns.append((optimizer_idx, all(p.requires_grad for p in self.gen.parameters()),
                           any(p.requires_grad for p in self.disc.parameters())))
        if optimizer_idx == 0:
            return self.gen_loss(self.gen, self.disc, z)
        if self.skip_disc_on_odd and batch_idx % 2:
            return None
        return self.disc_loss(self.gen, self.disc, z, real)

    def configure_optimizers(self):
        return [torch.optim.SGD(self.gen.parameters(), lr=0.2), torch.optim.Adam(self.disc.parameters(), lr=0.05)]


def gan_data(n=48):
    g = torch.Generator().manual_seed(5)
    return TensorDataset(torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g) * 0.5 + 2.0)


def plain_gan(model, data, epochs, skip_disc_on_odd=False):
    opt_g = torch.optim.SGD(model.gen.parameters(), lr=0.2)
    opt_d = torch.optim.Adam(model.disc.parameters(), lr=0.05)
    for _ in range(epochs):
        for i, (z, real) in enumerate(DataLoader(data, batch_size=8)):
            opt_g.zero_grad()
            TinyGAN.gen_loss(model.gen, model.disc, z).backward()
            opt_g.step()
            if skip_disc_on_odd and i % 2:
                continue
            opt_d.zero_grad()
            TinyGAN.disc_loss(model.gen, model.disc, z, real).backward()
            opt_d.step()


@pytest.mark.parametrize("skip_disc_on_odd", [False, True])
def test_two_optimizers_alternate_like_plain_gan_loop(skip_disc_on_odd):
    data = gan_data()
    model = TinyGAN(skip_disc_on_odd)
    reference = copy.deepcopy(model)
    trainer = make_trainer(max_epochs=2)
    trainer.fit(model, DataLoader(data, batch_size=8))
    plain_gan(reference, data, 2, skip_disc_on_odd)
    assert_same_weights(model, reference)
    assert trainer.global_step == 2 * 6  # one step of the loop per batch
    assert model.turns[:2] == [(0, True, False), (1, False, True)]
    # Toggling is undone after each turn.
    assert all(p.requires_grad for p in model.parameters())


def test_each_optimizer_changes_only_its_own_parameters():
    changes = []

    class Probe(TinyGAN):
        def on_before_optimizer_step(self, optimizer):
            self._before = {n: p.detach().clone() for n, p in self.named_parameters()}

        def configure_optimizers(self):
            opts = super().configure_optimizers()
            for opt in opts:
                opt.register_step_post_hook(lambda o, args, kwargs: self.record(o))
            return opts

        def record(self, optimizer):
            moved = {n.split(".")[0] for n, p in self.named_parameters() if not torch.equal(p, self._before[n])}
            changes.append((optimizer is self.trainer.optimizers[0], moved))

    trainer = make_trainer(max_epochs=1, limit_train_batches=2)
    trainer.fit(Probe(), DataLoader(gan_data(), batch_size=8))
    assert changes == [(True, {"gen"}), (False, {"disc"})] * 2


def test_two_optimizers_need_optimizer_idx():
    class NoIdx(TinyGAN):
        def training_step(self, batch, batch_idx):
            return self.gen(batch[0]).sum()

    with pytest.raises(Exception, match="optimizer_idx"):
        make_trainer(max_epochs=1).fit(NoIdx(), DataLoader(gan_data(), batch_size=8))


def test_two_optimizers_with_accumulation():
    data = gan_data(64)
    model = TinyGAN()
    reference = copy.deepcopy(model)
    trainer = make_trainer(max_epochs=1, accumulate_grad_batches=2)
    trainer.fit(model, DataLoader(data, batch_size=8))
    assert trainer.global_step == 4

    # Lightning semantics: each optimizer accumulates its own loss over the window and steps in its turn
    # on the window's last batch; the generator's loss on that batch sees the pre-step discriminator.
    opt_g = torch.optim.SGD(reference.gen.parameters(), lr=0.2)
    opt_d = torch.optim.Adam(reference.disc.parameters(), lr=0.05)
    for i, (z, real) in enumerate(DataLoader(data, batch_size=8)):
        for p in reference.disc.parameters():
            p.requires_grad_(False)
        (TinyGAN.gen_loss(reference.gen, reference.disc, z) / 2).backward()
        for p in reference.disc.parameters():
            p.requires_grad_(True)
        if i % 2:
            opt_g.step()
            opt_g.zero_grad()
        for p in reference.gen.parameters():
            p.requires_grad_(False)
        (TinyGAN.disc_loss(reference.gen, reference.disc, z, real) / 2).backward()
        for p in reference.gen.parameters():
            p.requires_grad_(True)
        if i % 2:
            opt_d.step()
            opt_d.zero_grad()
    assert_same_weights(model, reference)


# ---------------------------------------------------------------------------------------- skipping
def test_training_step_returning_none_skips_the_update_but_counts_the_step():
    data = regression_data(64)

    class Skipper(Regressor):
        def training_step(self, batch, batch_idx):
            if batch_idx % 2:
                return None
            return super().training_step(batch, batch_idx)

    model = Skipper()
    reference = copy.deepcopy(model)
    trainer = make_trainer(max_epochs=2)
    trainer.fit(model, DataLoader(data, batch_size=8))
    assert trainer.global_step == 2 * 8  # every batch counts, as in Lightning; half of them change nothing

    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        for i, (x, y) in enumerate(DataLoader(data, batch_size=8)):
            if i % 2:
                continue
            opt.zero_grad()
            F.mse_loss(reference(x), y).backward()
            opt.step()
    assert_same_weights(model, reference)


def test_training_step_dict_output_and_max_steps():
    class DictOut(Regressor):
        def training_step(self, batch, batch_idx):
            return {"loss": super().training_step(batch, batch_idx), "extra": 1}

    outputs = []

    class Keep(DictOut):
        def on_train_batch_end(self, out, batch, batch_idx):
            outputs.append(out)

    trainer = make_trainer(max_steps=5)
    trainer.fit(Keep(), DataLoader(regression_data(64), batch_size=8))
    assert trainer.global_step == 5
    assert len(outputs) == 5 and outputs[0]["extra"] == 1 and not outputs[0]["loss"].requires_grad
