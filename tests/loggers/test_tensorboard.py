"""TensorBoardLogger: real event files, read back with TensorBoard's own EventAccumulator."""
import os
import subprocess
import sys

import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from surge.loggers import TensorBoardLogger

SRC = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "src")


def read_events(log_dir):
    accumulator = EventAccumulator(log_dir)
    accumulator.Reload()
    return accumulator


def scalars(accumulator, tag):
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def test_import_does_not_load_tensorboard():
    code = (
        "import surge.loggers, sys; "
        "assert 'tensorboard' not in sys.modules and 'torch.utils.tensorboard' not in sys.modules"
    )
    env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_nothing_created_at_construction(tmp_path):
    logger = TensorBoardLogger(tmp_path / "tb", name="exp", version=2)
    assert logger.log_dir == os.path.join(str(tmp_path / "tb"), "exp", "version_2")
    assert logger.state_dict() == {"version": 2}
    assert not (tmp_path / "tb").exists()


def test_scalars_read_back_exactly(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="exp")
    # Values exact in float32, since event files store scalars as float32.
    for step, loss in [(0, 2.5), (10, 1.25), (20, 0.625)]:
        logger.log_metrics({"loss": torch.tensor(loss), "epoch": step // 10}, step=step)
    logger.log_metrics({"val_acc": 0.75}, step=20)
    logger.finalize("success")
    assert logger.log_dir == os.path.join(str(tmp_path), "exp", "version_0")
    events = read_events(logger.log_dir)
    assert sorted(events.Tags()["scalars"]) == ["epoch", "loss", "val_acc"]
    assert scalars(events, "loss") == [(0, 2.5), (10, 1.25), (20, 0.625)]
    assert scalars(events, "epoch") == [(0, 0.0), (10, 1.0), (20, 2.0)]
    assert scalars(events, "val_acc") == [(20, 0.75)]


def test_prefix_and_save_flushes(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="", prefix="train", flush_secs=10_000)
    assert logger.root_dir == str(tmp_path)
    logger.log_metrics({"loss": 0.5}, step=3)
    logger.save()  # readable before finalize
    assert scalars(read_events(logger.log_dir), "train-loss") == [(3, 0.5)]
    logger.finalize("success")


def test_hparams_yaml_and_text(tmp_path):
    logger = TensorBoardLogger(tmp_path, default_hp_metric=True)
    params = {"lr": 0.001, "dims": (8, 4), "opt": {"name": "sgd", "cls": torch.optim.SGD}}
    logger.log_hyperparams(params)
    logger.finalize("success")
    with open(os.path.join(logger.log_dir, "hparams.yaml")) as f:
        assert yaml.safe_load(f) == {"lr": 0.001, "dims": [8, 4], "opt": {"name": "sgd", "cls": str(torch.optim.SGD)}}
    events = read_events(logger.log_dir)
    (text,) = events.Tensors("hparams/text_summary")
    assert b"lr: 0.001" in text.tensor_proto.string_val[0]
    assert scalars(events, "hp_metric") == [(0, -1.0)]


def test_resume_reuses_folder_and_hides_repeated_steps(tmp_path):
    first = TensorBoardLogger(tmp_path)
    for step in range(0, 130, 10):  # killed after step 120; last checkpoint at step 100
        first.log_metrics({"loss": float(step)}, step=step)
    state = first.state_dict()
    first.finalize("interrupted")
    resumed = TensorBoardLogger(tmp_path)
    resumed.load_state_dict(state)
    resumed.log_hyperparams({"lr": 0.5})  # before the first step: must survive the purge
    for step in range(100, 150, 10):
        resumed.log_metrics({"loss": -float(step)}, step=step)
    resumed.finalize("success")
    assert resumed.log_dir == first.log_dir
    assert len([f for f in os.listdir(resumed.log_dir) if f.startswith("events.out")]) == 2
    events = read_events(resumed.log_dir)
    expected = [(s, float(s)) for s in range(0, 100, 10)] + [(s, -float(s)) for s in range(100, 150, 10)]
    assert scalars(events, "loss") == expected
    assert len(events.Tensors("hparams/text_summary")) == 1
