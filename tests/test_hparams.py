"""save_hyperparameters, hparams, and how they travel through checkpoints."""
from __future__ import annotations

import argparse
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.hparams import AttributeDict, to_plain


def data():
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


class Base(surge.Module):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.forward(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class AllArgs(Base):
    def __init__(self, hidden: int = 4, lr: float = 0.1, name: str = "x", dims=(1, 2), opts=None):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x)


class WithBackbone(Base):
    def __init__(self, backbone: nn.Module, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone(x)


class Ignoring(Base):
    def __init__(self, backbone: nn.Module, lr: float = 0.1, debug: bool = False):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "debug"])
        self.backbone = backbone

    def forward(self, x):
        return self.backbone(x)


class Named(Base):
    def __init__(self, a: int = 1, b: int = 2, c: int = 3):
        super().__init__()
        self.save_hyperparameters("a", "c")
        self.layer = nn.Linear(4, 1)

    def forward(self, x):
        return self.layer(x)


class FromDict(Base):
    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters(config)
        self.layer = nn.Linear(4, config["width"])
        self.out = nn.Linear(config["width"], 1)

    def forward(self, x):
        return self.out(self.layer(x))


class Child(AllArgs):
    def __init__(self, extra: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.save_hyperparameters()


def fit_and_checkpoint(model, tmp_path):
    t = surge.Trainer(default_root_dir=str(tmp_path), max_epochs=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False)
    t.fit(model, data())
    return t.checkpoint_callback.last_model_path


def test_save_hyperparameters_records_all_init_args():
    m = AllArgs(hidden=6, opts={"beta": [1, 2]})
    assert dict(m.hparams) == {"hidden": 6, "lr": 0.1, "name": "x", "dims": (1, 2), "opts": {"beta": [1, 2]}}
    assert m.hparams.hidden == 6 and m.hparams["lr"] == 0.1
    with pytest.raises(AttributeError, match="nope"):
        m.hparams.nope


def test_save_hyperparameters_with_ignore_and_names():
    m = Ignoring(nn.Linear(4, 1), lr=0.3, debug=True)
    assert dict(m.hparams) == {"lr": 0.3}
    assert dict(Named(5, 6, 7).hparams) == {"a": 5, "c": 7}


def test_save_hyperparameters_unknown_name():
    class Bad(Base):
        def __init__(self, a=1):
            super().__init__()
            self.save_hyperparameters("b")

    with pytest.raises(ValueError, match="'b'"):
        Bad()


def test_save_hyperparameters_from_dict_and_namespace():
    m = FromDict({"width": 3, "act": "relu"})
    assert dict(m.hparams) == {"width": 3, "act": "relu"}

    class FromNs(Base):
        def __init__(self, args):
            super().__init__()
            self.save_hyperparameters(args)

    assert dict(FromNs(argparse.Namespace(lr=0.5, layers=2)).hparams) == {"lr": 0.5, "layers": 2}


def test_subclass_with_kwargs_records_everything():
    m = Child(extra=0.25, hidden=3)
    assert m.hparams.extra == 0.25 and m.hparams.hidden == 3


def test_hparams_empty_by_default():
    class Plain(Base):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 1)

    assert dict(Plain().hparams) == {}
    assert isinstance(Plain().hparams, AttributeDict)


def test_to_plain():
    assert to_plain({"a": (1, 2), 3: [None, True]}) == {"a": [1, 2], "3": [None, True]}
    assert to_plain(argparse.Namespace(x=1)) == {"x": 1}
    with pytest.raises(TypeError):
        to_plain(nn.Linear(1, 1))
    with pytest.raises(TypeError):
        to_plain(torch.tensor(1.0))


def test_checkpoint_round_trip_with_plain_hparams(tmp_path):
    path = fit_and_checkpoint(AllArgs(hidden=6, name="y", opts={"k": [1.5]}), tmp_path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"] == {"hidden": 6, "lr": 0.1, "name": "y", "dims": [1, 2], "opts": {"k": [1.5]}}
    loaded = AllArgs.load_from_checkpoint(path)
    assert loaded.hparams.hidden == 6 and loaded.hparams.name == "y"
    assert loaded.net[0].out_features == 6


def test_load_from_checkpoint_with_dict_hparams(tmp_path):
    path = fit_and_checkpoint(FromDict({"width": 5}), tmp_path)
    with pytest.raises(TypeError, match="config"):
        FromDict.load_from_checkpoint(path)  # the dict's keys are not init arguments
    loaded = FromDict.load_from_checkpoint(path, config={"width": 5})
    assert loaded.layer.out_features == 5


def test_non_plain_hparam_is_skipped_with_warning(tmp_path):
    model = WithBackbone(nn.Linear(4, 1), lr=0.2)
    with pytest.warns(UserWarning, match="backbone"):
        path = fit_and_checkpoint(model, tmp_path)
    ckpt = torch.load(path, weights_only=True)  # still loads safely
    assert ckpt["hyper_parameters"] == {"lr": 0.2}
    with pytest.raises(TypeError, match="backbone"):
        WithBackbone.load_from_checkpoint(path)
    loaded = WithBackbone.load_from_checkpoint(path, backbone=nn.Linear(4, 1))
    assert loaded.hparams.lr == 0.2
    assert torch.equal(loaded.backbone.weight, model.backbone.weight)


def test_ignored_backbone_leaves_no_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = fit_and_checkpoint(Ignoring(nn.Linear(4, 1)), tmp_path)
    assert torch.load(path, weights_only=True)["hyper_parameters"] == {"lr": 0.1}


def test_hparams_written_to_logger(tmp_path):
    import yaml

    logger = surge.loggers.CSVLogger(tmp_path)
    t = surge.Trainer(default_root_dir=str(tmp_path), max_epochs=1, logger=logger, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)
    t.fit(AllArgs(hidden=7), data())
    with open(tmp_path / "surge_logs" / "version_0" / "hparams.yaml") as f:
        saved = yaml.safe_load(f)
    assert saved["hidden"] == 7 and saved["dims"] == [1, 2]
