"""ModelPruning: the sparsity each epoch really reaches, pruned entries that stay zero while training goes on,
the lottery ticket reset, permanence at train end and in checkpoints, and Lightning's argument checks."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.callbacks import Callback, ModelCheckpoint, ModelPruning
from surge.utils import MisconfigurationError


def data(n=16):
    x = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


class Net(surge.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.first = nn.Linear(8, 10)
        self.last = nn.Linear(10, 1)

    def forward(self, x):
        return self.last(torch.relu(self.first(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)


def zeros_fraction(*tensors):
    return sum(int((t == 0).sum()) for t in tensors) / sum(t.numel() for t in tensors)


class Watch(Callback):
    """After every batch: the weights the forward used are zero wherever the mask is. After every epoch: the
    sparsity, and the masks and trained values."""

    def __init__(self):
        self.sparsity, self.masks, self.origs = [], [], []
        self.batches_checked = 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        for layer in (module.first, module.last):
            if hasattr(layer, "weight_mask"):
                assert torch.all(layer.weight[layer.weight_mask == 0] == 0)
                self.batches_checked += 1

    def on_train_epoch_end(self, trainer, module):
        self.sparsity.append(zeros_fraction(module.first.weight, module.last.weight))
        self.masks.append({n: getattr(module, n).weight_mask.clone() for n in ("first", "last")
                           if hasattr(getattr(module, n), "weight_mask")})
        self.origs.append({n: getattr(module, n).weight_orig.detach().clone() for n in ("first", "last")
                           if hasattr(getattr(module, n), "weight_orig")})


def fit(tmp_path, module, callbacks, max_epochs=3, val=False, **kw):
    trainer = surge.Trainer(default_root_dir=str(tmp_path), max_epochs=max_epochs, callbacks=callbacks, logger=False,
                            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw)
    trainer.fit(module, data(), data(8) if val else None)
    return trainer


def test_global_pruning_reaches_the_sparsity_and_pruned_weights_stay_zero(tmp_path):
    module = Net()
    watch = Watch()
    pruning = ModelPruning("l1_unstructured", parameters_to_prune=[(module.first, "weight"), (module.last, "weight")],
                           amount=0.5, use_lottery_ticket_hypothesis=False, make_pruning_permanent=False)
    fit(tmp_path, module, [pruning, watch])
    # 90 weights; each epoch prunes half of those left: 45, then 22 more (round(0.5 * 45)), then 12 more.
    assert watch.sparsity == [45 / 90, 67 / 90, 79 / 90]
    assert watch.batches_checked == 2 * 4 * 2  # epochs 1 and 2 trained with masks, 4 batches, 2 layers
    # Each mask only grows: what was pruned stays pruned.
    for a, b in zip(watch.masks, watch.masks[1:]):
        for name in a:
            assert torch.all(b[name][a[name] == 0] == 0)
    # Global: at the first pruning, the pruned entries are the smallest in magnitude over both layers together.
    orig = torch.cat([watch.origs[0]["first"].flatten(), watch.origs[0]["last"].flatten()]).abs()
    mask = torch.cat([watch.masks[0]["first"].flatten(), watch.masks[0]["last"].flatten()])
    assert orig[mask == 0].max() <= orig[mask == 1].min()
    assert 0 < int((watch.masks[0]["last"] == 0).sum()) < 45  # ranked together, not half of each layer
    assert hasattr(module.first, "weight_mask")  # make_pruning_permanent=False: the masks are still there


def test_local_pruning_per_parameter_and_int_amount_and_permanence(tmp_path):
    module = Net()
    watch = Watch()
    pruning = ModelPruning("l1_unstructured", parameter_names=["weight"], use_global_unstructured=False, amount=3,
                           use_lottery_ticket_hypothesis=False)
    fit(tmp_path, module, [pruning, watch], max_epochs=2)
    # amount=3: three more entries of each weight each epoch.
    assert [int((m["first"] == 0).sum()) for m in watch.masks] == [3, 6]
    assert [int((m["last"] == 0).sum()) for m in watch.masks] == [3, 6]
    # Local L1: within each layer the pruned entries are the smallest trained values at the time.
    first_orig, first_mask = watch.origs[0]["first"], watch.masks[0]["first"]
    assert first_orig.abs()[first_mask == 0].max() <= first_orig.abs()[first_mask == 1].min()
    # Permanent at train end: no masks, no hooks, plain parameters with the zeros in them.
    for layer in (module.first, module.last):
        assert not hasattr(layer, "weight_mask") and not hasattr(layer, "weight_orig")
        assert isinstance(layer.weight, nn.Parameter) and "weight" in dict(layer.named_parameters())
        assert not any(isinstance(h, torch_prune.BasePruningMethod) for h in layer._forward_pre_hooks.values())
        assert int((layer.weight == 0).sum()) == 6
    assert int((module.first.bias == 0).sum()) == 0  # parameter_names=["weight"]: biases untouched


def test_amount_and_apply_pruning_as_functions_of_the_epoch(tmp_path):
    module = Net()
    watch = Watch()
    pruning = ModelPruning("random_unstructured", parameters_to_prune=[(module.first, "weight")],
                           amount=lambda epoch: [0.5, 0.0, 0.2][epoch], apply_pruning=lambda epoch: epoch != 2,
                           use_lottery_ticket_hypothesis=False, make_pruning_permanent=False)
    fit(tmp_path, module, [pruning, watch])
    zeros = [int((m["first"] == 0).sum()) for m in watch.masks]
    assert zeros == [40, 40, 40]  # 80 weights: half at epoch 0; amount 0 at epoch 1; apply_pruning False at epoch 2


def test_lottery_ticket_resets_the_survivors_to_their_values_before_fit(tmp_path):
    module = Net()
    initial = module.first.weight.detach().clone()
    watch = Watch()
    pruning = ModelPruning("l1_unstructured", parameters_to_prune=[(module.first, "weight")], amount=0.25,
                           make_pruning_permanent=False)  # use_lottery_ticket_hypothesis=True by default
    fit(tmp_path, module, [pruning, watch], max_epochs=1)
    mask = module.first.weight_mask
    assert int((mask == 0).sum()) == 20
    assert torch.equal(module.first.weight_orig.detach(), initial)  # trained values replaced by the initial ones


def test_resample_parameters_gives_fresh_values(tmp_path):
    module = Net()
    initial = module.first.weight.detach().clone()
    pruning = ModelPruning("l1_unstructured", parameters_to_prune=[(module.first, "weight")], amount=0.25,
                           resample_parameters=True, make_pruning_permanent=False)
    fit(tmp_path, module, [pruning], max_epochs=1)
    orig = module.first.weight_orig.detach()
    assert not torch.equal(orig, initial)
    bound = 1 / 8 ** 0.5  # nn.Linear's reset_parameters: uniform in +-1/sqrt(fan_in)
    assert orig.abs().max() <= bound


def test_structured_pruning_removes_whole_rows(tmp_path):
    module = Net()
    pruning = ModelPruning("ln_structured", parameters_to_prune=[(module.first, "weight")], amount=0.3,
                           use_global_unstructured=False, pruning_dim=0, pruning_norm=2,
                           use_lottery_ticket_hypothesis=False)
    fit(tmp_path, module, [pruning], max_epochs=1)
    rows_zero = (module.first.weight == 0).all(dim=1)
    assert int(rows_zero.sum()) == 3 and int((module.first.weight == 0).sum()) == 3 * 8


def test_checkpoint_holds_plain_pruned_weights_while_training_keeps_the_masks(tmp_path):
    module = Net()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, every_n_epochs=1)
    pruning = ModelPruning("l1_unstructured", parameters_to_prune=[(module.first, "weight")], amount=0.5,
                           use_lottery_ticket_hypothesis=False)
    fit(tmp_path, module, [pruning, ckpt], max_epochs=2)
    state = torch.load(tmp_path / "ck" / "epoch=0-step=4.ckpt", weights_only=False)["state_dict"]
    assert "first.weight" in state and not any(k.endswith(("_orig", "_mask")) for k in state)
    assert int((state["first.weight"] == 0).sum()) == 40
    fresh = Net()
    fresh.load_state_dict(state)  # loads into an unpruned module
    assert zeros_fraction(fresh.first.weight) == 0.5


def test_prune_on_validation_end(tmp_path):
    module = Net()
    watch = Watch()
    pruning = ModelPruning("l1_unstructured", parameters_to_prune=[(module.first, "weight")], amount=0.5,
                           prune_on_train_epoch_end=False, use_lottery_ticket_hypothesis=False,
                           make_pruning_permanent=False)
    fit(tmp_path, module, [pruning, watch], max_epochs=4, val=True, check_val_every_n_epoch=2)
    # Validation after epochs 1 and 3 only: pruning follows it, not the training epochs.
    assert [int((m.get("first", torch.ones(1)) == 0).sum()) for m in watch.masks] == [0, 40, 40, 60]
    assert int((module.first.weight_mask == 0).sum()) == 60
    surge.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                  callbacks=[pruning]).validate(module, data(8))
    assert int((module.first.weight_mask == 0).sum()) == 60  # trainer.validate() prunes nothing


def test_verbose_logs_the_sparsity(tmp_path, caplog):
    module = Net()
    pruning = ModelPruning("l1_unstructured", parameters_to_prune=[(module.first, "weight")], amount=0.5,
                           verbose=2, use_lottery_ticket_hypothesis=False)
    with caplog.at_level(logging.INFO, logger="surge"):
        fit(tmp_path, module, [pruning], max_epochs=1)
    assert "Applied `l1_unstructured`. Pruned: 0/80 (0.00%) -> 40/80 (50.00%)" in caplog.text
    assert ".weight` with amount=0.5. Pruned: 0 (0.00%) -> 40 (50.00%)" in caplog.text


def test_custom_pruning_method_class(tmp_path):
    class EveryOther(torch_prune.BasePruningMethod):
        PRUNING_TYPE = "unstructured"

        def __init__(self, amount):
            self.amount = amount

        def compute_mask(self, t, default_mask):
            mask = default_mask.clone()
            mask.view(-1)[::2] = 0
            return mask

    module = Net()
    pruning = ModelPruning(EveryOther, parameters_to_prune=[(module.first, "weight")], amount=0.5,
                           use_lottery_ticket_hypothesis=False)
    fit(tmp_path, module, [pruning], max_epochs=1)
    assert torch.all(module.first.weight.view(-1)[::2] == 0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(pruning_fn="l1_unstructured", parameter_names=["gamma"]), "parameter_names"),
    (dict(pruning_fn="not_a_fn"), "isn't available"),
    (dict(pruning_fn="ln_structured", use_global_unstructured=False), "pruning_dim"),
    (dict(pruning_fn="ln_structured", use_global_unstructured=False, pruning_dim=0), "pruning_norm"),
    (dict(pruning_fn="random_structured", pruning_dim=0), "unstructured"),
    (dict(pruning_fn=torch_prune.L1Unstructured, use_global_unstructured=False), "BasePruningMethod"),
    (dict(pruning_fn=torch_prune.L1Unstructured(0.5)), "pass the class"),
    (dict(pruning_fn="l1_unstructured", amount="half"), "amount"),
    (dict(pruning_fn="l1_unstructured", verbose=3), "verbose"),
])
def test_arguments_are_checked(kwargs, match):
    with pytest.raises(MisconfigurationError, match=match):
        ModelPruning(**kwargs)


def test_parameters_to_prune_are_checked(tmp_path):
    with pytest.raises(MisconfigurationError, match="don't exist in the model"):
        fit(tmp_path, Net(), [ModelPruning("l1_unstructured", parameters_to_prune=[(nn.Linear(2, 2), "weight")])])
    module = Net()
    with pytest.raises(MisconfigurationError, match="missing parameters: \\['gamma'\\]"):
        fit(tmp_path, module, [ModelPruning("l1_unstructured", parameters_to_prune=[(module.first, "gamma")])])
    with pytest.raises(MisconfigurationError, match="list of tuple"):
        fit(tmp_path, module, [ModelPruning("l1_unstructured", parameters_to_prune=[module.first])])


@pytest.mark.parametrize("lottery", [False, True])
def test_resume_keeps_the_masks_and_matches_an_uninterrupted_fit(tmp_path, lottery):
    def pruning():
        return ModelPruning("l1_unstructured", parameter_names=["weight"], amount=0.3,
                            use_lottery_ticket_hypothesis=lottery)

    whole = Net()
    fit(tmp_path / "whole", whole, [pruning()], max_epochs=4)
    first = Net()
    fit(tmp_path / "first", first, [pruning(), ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1)], max_epochs=2)
    resumed, watch = Net(), Watch()
    trainer = surge.Trainer(default_root_dir=str(tmp_path / "resumed"), max_epochs=4, callbacks=[pruning(), watch],
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
    trainer.fit(resumed, data(), ckpt_path=str(tmp_path / "ck" / "epoch=1-step=8.ckpt"))
    assert watch.batches_checked > 0  # the masks were on from the first resumed batch: pruned entries stayed zero
    # epochs 0-1 pruned 30% twice: 51% of the weights; 2-3 twice more: 1 - 0.7 ** 4 = 76%
    assert zeros_fraction(resumed.first.weight, resumed.last.weight) == pytest.approx(
        zeros_fraction(whole.first.weight, whole.last.weight), abs=0) and watch.sparsity[-1] > 0.7
    for key, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
