"""Security: a checkpoint cannot run code, hyperparameters are plain data, the rendezvous is on loopback."""
import os

import pytest
import torch
import yaml

import surge
from surge.checkpoint import CheckpointError, load_checkpoint
from surge.demos.toy import ToyModel, ToyDataset
from surge.launch import detect_environment
from torch.utils.data import DataLoader

from launch_env import clear_launch_vars


class _RunsCode:
    """Unpickling this (torch.load(weights_only=False)) would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_checkpoint(tmp_path, model):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {}, "payload": _RunsCode(str(marker))}, path)
    assert not marker.exists()
    return path, marker


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(tmp_path):
    model = ToyModel()
    path, marker = _malicious_checkpoint(tmp_path, model)

    with pytest.raises(CheckpointError, match=r"could run code.*weights_only=False"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="could run code"):
        ToyModel.load_from_checkpoint(path)
    trainer = surge.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(CheckpointError, match="could run code"):
        trainer.fit(model, DataLoader(ToyDataset(32, 8), batch_size=4), ckpt_path=path)
    assert not marker.exists()
    # The sanity check of the test itself: a full unpickle does run the payload.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_hyperparameters_are_saved_as_plain_data(tmp_path):
    class Net(ToyModel):
        def __init__(self, size=32, lr=0.1, batch_size=8, dims=(4, 8), act=torch.nn.ReLU, extra=None):
            super().__init__(size=size, lr=lr)
            self.save_hyperparameters()

    from surge.loggers import CSVLogger

    model = Net(extra={"nested": [1, 2.5, "x"]})
    trainer = surge.Trainer(accelerator="cpu", max_steps=1, logger=CSVLogger(tmp_path), default_root_dir=tmp_path,
                            enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, DataLoader(ToyDataset(32, 8), batch_size=4))
    ckpt_path = tmp_path / "hp.ckpt"
    trainer.save_checkpoint(ckpt_path)
    # weights_only=True would refuse any object that is not plain data
    ckpt = torch.load(ckpt_path, weights_only=True)
    plain = (bool, int, float, str, type(None))

    def check(value):
        if isinstance(value, dict):
            for k, v in value.items():
                assert isinstance(k, str)
                check(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                check(v)
        else:
            assert isinstance(value, plain), value

    check(ckpt["hyper_parameters"])
    assert ckpt["hyper_parameters"]["lr"] == 0.1
    with open(os.path.join(trainer.log_dir, "hparams.yaml")) as f:
        text = f.read()
    assert "!!python" not in text  # yaml.safe_dump: no python object tags
    assert yaml.safe_load(text)["extra"] == {"nested": [1, 2.5, "x"]}


def test_rendezvous_binds_loopback_for_single_machine_runs(monkeypatch):
    clear_launch_vars(monkeypatch)
    env = detect_environment(devices=2, num_nodes=1)
    assert env.kind == "local" and env.main_address == "127.0.0.1"
    from surge.launch import find_free_port
    import socket

    # The port surge picks is probed on loopback only, never on all interfaces.
    port = find_free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
