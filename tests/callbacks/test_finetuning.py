"""BaseFinetuning / BackboneFinetuning: what is frozen when, the param group added at the unfreeze and its
learning rate, batch norm under train_bn, and a resume after the unfreeze."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.callbacks import ModelCheckpoint
from surge.callbacks.finetuning import BackboneFinetuning, BaseFinetuning
from surge.utils import MisconfigurationError


class Net(surge.Module):
    def __init__(self, bn=False):
        super().__init__()
        layers = [nn.Linear(4, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.ReLU()]
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Linear(8, 1)
        self.seen = []  # per epoch: (backbone trainable, param groups' lrs, backbone weight)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.head(self.backbone(x)), y)

    def on_train_epoch_end(self):
        opt = self.trainer.optimizers[0]
        self.seen.append((self.backbone[0].weight.requires_grad, [g["lr"] for g in opt.param_groups],
                          self.backbone[0].weight.detach().clone()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class HeadOnly(Net):
    def configure_optimizers(self):  # the optimizer starts without the backbone, as fine-tuning code does
        return torch.optim.SGD(self.head.parameters(), lr=0.1)


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


def fit(tmp_path, model, callbacks, max_epochs, ckpt_path=None):
    trainer = surge.Trainer(default_root_dir=tmp_path, max_epochs=max_epochs, callbacks=callbacks, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                            enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))
    trainer.fit(model, data(), ckpt_path=ckpt_path)
    return trainer


def test_the_backbone_trains_from_its_epoch_in_its_own_group_with_a_rising_lr(tmp_path):
    model = HeadOnly()
    start = model.backbone[0].weight.detach().clone()
    fit(tmp_path, model, [BackboneFinetuning(unfreeze_backbone_at_epoch=2)], 5)
    assert [s[0] for s in model.seen] == [False, False, True, True, True]
    # frozen until epoch 2, trained from then on
    assert torch.equal(model.seen[1][2], start) and not torch.equal(model.seen[2][2], start)
    lrs = [[round(lr, 6) for lr in s[1]] for s in model.seen]
    assert lrs == [[0.1], [0.1], [0.1, 0.01], [0.1, 0.015], [0.1, 0.0225]]  # 0.1 x 0.1, then x1.5 per epoch


def test_the_added_group_starts_at_the_ratio_and_grows_by_lambda_up_to_the_head_lr(tmp_path):
    model = HeadOnly()
    callback = BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=0.1,
                                  lambda_func=lambda epoch: 2.0)
    fit(tmp_path, model, [callback], 5)
    lrs = [s[1] for s in model.seen]
    assert lrs[0] == [0.1]
    assert [round(g[1], 6) for g in lrs[1:]] == [0.01, 0.02, 0.04, 0.08]  # x2 per epoch, below 0.1 still
    assert model.seen[-1][1][0] == 0.1
    assert callback.state_dict()["internal_optimizer_metadata"][0][1]["params"] == ["backbone.0.weight",
                                                                                  "backbone.0.bias"]


def test_batch_norm_keeps_training_under_train_bn_and_stops_otherwise():
    for train_bn in (True, False):
        model = Net(bn=True)
        BaseFinetuning.freeze(model.backbone, train_bn=train_bn)
        assert not model.backbone[0].weight.requires_grad
        assert model.backbone[1].weight.requires_grad is train_bn
        assert model.backbone[1].track_running_stats is train_bn
        BaseFinetuning.make_trainable(model.backbone)
        assert all(p.requires_grad for p in model.backbone.parameters()) and model.backbone[1].track_running_stats


def test_a_params_already_in_the_optimizer_are_skipped_with_a_warning():
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning, match="already exist within another group"):
        BaseFinetuning().unfreeze_and_add_param_group(model.backbone, opt)
    assert len(opt.param_groups) == 1


def test_a_resume_after_the_unfreeze_rebuilds_the_group_and_goes_on_as_the_unbroken_run(tmp_path):
    def callback():
        return BackboneFinetuning(unfreeze_backbone_at_epoch=1, lambda_func=lambda epoch: 2.0)

    surge.seed_everything(0)
    whole = HeadOnly()
    fit(tmp_path / "whole", whole, [callback()], 4)

    surge.seed_everything(0)
    first = HeadOnly()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, save_top_k=0)
    fit(tmp_path / "a", first, [callback(), ckpt], 2)
    resumed = HeadOnly()
    fit(tmp_path / "b", resumed, [callback()], 4, ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert [s[1] for s in resumed.seen] == [s[1] for s in whole.seen[2:]]
    assert torch.equal(resumed.seen[-1][2], whole.seen[-1][2])


def test_backbone_finetuning_needs_a_backbone(tmp_path):
    class NoBackbone(HeadOnly):
        def __init__(self):
            super().__init__()
            self.features = self.backbone  # under another name
            del self.backbone

    with pytest.raises(MisconfigurationError, match="should have a nn.Module `backbone` attribute"):
        fit(tmp_path, NoBackbone(), [BackboneFinetuning()], 1)


def test_a_subclass_must_write_both_methods():
    with pytest.raises(NotImplementedError, match="freeze_before_training"):
        BaseFinetuning().freeze_before_training(Net())
