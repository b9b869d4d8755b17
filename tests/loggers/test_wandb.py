"""WandbLogger on the real wandb package in offline mode: each test reads back the run's own record file
(``<save_dir>/wandb/offline-run-*/run-<id>.wandb``, what ``wandb sync`` uploads) to see what was logged."""
from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from argparse import Namespace

import pytest
import torch

wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install 'surge[wandb]')")

import surge
from surge import dialect
from surge.demos.toy import ToyModel
from surge.loggers import WandbLogger
from surge.utils import MisconfigurationError, rank_zero_only

SRC = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "src")


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    """No network and nothing outside tmp_path: offline mode, wandb's own folders in the test's folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, sub in [("WANDB_DIR", "wandb_dir"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_DATA_DIR", "data")]:
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    yield
    wandb.finish()  # no run carries over into another test


# ---------------------------------------------------------------------- reading an offline run
def read_run(save_dir, run_id):
    """The records of the finished offline run ``run_id``: a list of (kind, record), in the order written.

    The file is wandb's transaction log: a 7-byte header (":W&B", magic, version), then LevelDB-log blocks
    of 32 KiB whose chunks (checksum u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last) carry
    serialized ``wandb_internal_pb2.Record`` messages.
    """
    (path,) = glob.glob(os.path.join(str(save_dir), "wandb", f"offline-run-*-{run_id}", f"run-{run_id}.wandb"))
    deadline = time.monotonic() + 30
    while True:  # wandb's service process may still be writing the last records when wandb.finish() returns
        records = _records(open(path, "rb").read())
        if (records and records[-1][0] == "exit") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert records and records[-1][0] == "exit", f"{path} ends before the run's exit record: call wandb.finish() first"
    return records


def _records(raw):
    from wandb.proto import wandb_internal_pb2

    if len(raw) < 7:  # not even the header written yet
        return []
    assert raw[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(raw):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0:
            pos += room
            continue
        if pos + 7 + length > len(raw):  # a chunk still being written
            break
        pending += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append((record.WhichOneof("record_type"), record))
            pending = b""
    return records


def history(records):
    """Each logged row as {key: value}, wandb's own ``_step``/``_runtime``/... left out."""
    rows = []
    for kind, record in records:
        if kind == "history":
            row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    return rows


def config(records):
    out = {}
    for kind, record in records:
        if kind == "config":
            out.update({item.key: json.loads(item.value_json) for item in record.config.update})
    return out


def artifacts(records):
    return [(i, record.artifact) for i, (kind, record) in enumerate(records) if kind == "artifact"]


def md5_b64(path):
    return base64.b64encode(hashlib.md5(open(path, "rb").read()).digest()).decode()


def fit(tmp_path, logger, model=None, **kw):
    trainer = surge.Trainer(default_root_dir=str(tmp_path), logger=logger, max_epochs=2, limit_train_batches=4,
                            limit_val_batches=2, log_every_n_steps=2, enable_progress_bar=False,
                            enable_model_summary=False, **kw)
    trainer.fit(model or ToyModel(lr=0.05))
    return trainer


# ---------------------------------------------------------------------- with the Trainer
def test_fit_logs_config_metrics_and_the_kept_checkpoints_at_the_end(tmp_path):
    logger = WandbLogger(project="boring", name="first", save_dir=tmp_path / "runs", log_model=True)
    best = surge.ModelCheckpoint(monitor="val_loss", save_top_k=1, save_last=True)
    trainer = fit(tmp_path, logger, callbacks=[best])
    run_id = logger.version
    assert logger.name == "boring" and logger.experiment.name == "first"
    # Lightning's checkpoint folder for this logger: save_dir/project/<run id>/checkpoints
    assert best.dirpath == os.path.join(str(tmp_path / "runs"), "boring", run_id, "checkpoints")
    wandb.finish()

    records = read_run(tmp_path / "runs", run_id)
    assert config(records) == {"size": 32, "out": 2, "lr": 0.05, "batch_size": 8}
    rows = history(records)
    train = [(r["trainer/global_step"], r["epoch"]) for r in rows if "train_loss" in r]
    assert train == [(2, 0), (4, 0), (6, 1), (8, 1)]
    assert [r["trainer/global_step"] for r in rows if "val_loss" in r] == [4, 8]
    assert rows[-1]["val_loss"] == pytest.approx(trainer.callback_metrics["val_loss"].item())

    logged = artifacts(records)
    last_row = max(i for i, (kind, _) in enumerate(records) if kind == "history")
    assert logged and all(i > last_row for i, _ in logged)  # log_model=True: after training, not during it
    by_name = {json.loads(a.metadata)["original_filename"]: a for _, a in logged}
    assert set(by_name) == {os.path.basename(best.best_model_path), "last.ckpt"}
    top = by_name[os.path.basename(best.best_model_path)]
    assert top.name == f"model-{run_id}" and top.type == "model"
    assert sorted(top.aliases) == ["best", "latest"] and list(by_name["last.ckpt"].aliases) == ["latest"]
    meta = json.loads(top.metadata)
    assert meta["score"] == pytest.approx(best.best_model_score.item())
    assert meta["ModelCheckpoint"]["monitor"] == "val_loss" and meta["ModelCheckpoint"]["save_top_k"] == 1
    (entry,) = top.manifest.contents
    assert entry.path == "model.ckpt" and entry.digest == md5_b64(best.best_model_path)


def test_log_model_all_uploads_each_save_and_watch_logs_histograms(tmp_path):
    logger = WandbLogger(project="p", save_dir=tmp_path, log_model="all", checkpoint_name="toy", prefix="fit")
    model = ToyModel(lr=0.05)
    logger.watch(model, log="all", log_freq=2)
    fit(tmp_path, logger, model=model)
    run_id = logger.version
    wandb.finish()

    records = read_run(tmp_path, run_id)
    rows = history(records)
    assert [r["trainer/global_step"] for r in rows if "fit-train_loss" in r] == [2, 4, 6, 8]
    keys = set().union(*rows)
    assert {"gradients/layer.weight", "parameters/layer.weight"} <= {k.rsplit("/", 1)[0] for k in keys}
    logged = artifacts(records)
    first_row_after = [i for i, (kind, _) in enumerate(records) if kind == "history" and i > logged[0][0]]
    assert first_row_after  # the first checkpoint went up while training went on
    names = [json.loads(a.metadata)["original_filename"] for _, a in logged]
    assert names == ["epoch=0-step=4.ckpt", "last.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]
    assert {a.name for _, a in logged} == {"toy"}


def test_resumed_fit_logs_to_a_new_run_and_says_how_to_continue_the_old_one(tmp_path):
    first = WandbLogger(project="p", save_dir=tmp_path)
    trainer = fit(tmp_path, first)
    old_id, ckpt = first.version, trainer.checkpoint_callback.last_model_path
    wandb.finish()
    again = WandbLogger(project="p", save_dir=tmp_path)
    resumed = surge.Trainer(default_root_dir=str(tmp_path), logger=again, max_epochs=3, limit_train_batches=4,
                            limit_val_batches=2, log_every_n_steps=2, enable_progress_bar=False,
                            enable_model_summary=False)
    with pytest.warns(UserWarning, match=rf"run '{old_id}'.*WandbLogger\(id='{old_id}'\)"):
        resumed.fit(ToyModel(lr=0.05), ckpt_path=ckpt)
    assert again.version != old_id and resumed.global_step == 12
    wandb.finish()
    rows = history(read_run(tmp_path, again.version))
    assert [r["trainer/global_step"] for r in rows if "train_loss" in r] == [10, 12]  # only the resumed steps


# ---------------------------------------------------------------------- direct use
def test_direct_calls_offline_argument_and_resume_id(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")  # offline=True alone must keep the run local
    logger = WandbLogger(save_dir=tmp_path / "w", version="run1", offline=True, project="direct")
    assert logger.save_dir == str(tmp_path / "w") and not (tmp_path / "w").exists()  # nothing until first use
    logger.log_hyperparams(Namespace(lr=0.1, model={"hidden": 64, "act": torch.nn.ReLU}))
    logger.log_metrics({"loss": torch.tensor(0.5), "acc": 1}, step=3)
    logger.log_metrics({"loss": 0.25})
    logger.log_table("samples", columns=["x", "y"], data=[[1, "a"], [2, "b"]], step=4)
    assert logger.version == "run1" and logger.experiment.id == "run1"
    assert logger.log_dir == os.path.join(str(tmp_path / "w"), "direct", "run1")
    assert logger.state_dict() == {"version": "run1"}
    wandb.finish()

    records = read_run(tmp_path / "w", "run1")
    assert config(records) == {"lr": 0.1, "model": {"hidden": 64, "act": str(torch.nn.ReLU)}}
    rows = history(records)
    assert rows[0] == {"loss": 0.5, "acc": 1, "trainer/global_step": 3}
    assert rows[1] == {"loss": 0.25, "trainer/global_step": 3}  # no step: wandb's step_sync carries the last
    assert rows[2]["trainer/global_step"] == 4 and rows[2]["samples/_type"] == "table-file"
    assert rows[2]["samples/nrows"] == 2

    # A second logger given the same id continues that run (resume="allow"): a new offline folder, same id.
    again = WandbLogger(save_dir=tmp_path / "w", id="run1", offline=True, project="direct")
    again.log_metrics({"loss": 0.125}, step=5)
    assert again.version == "run1"


def test_other_ranks_start_no_run_and_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = WandbLogger(save_dir=tmp_path / "save", log_model="all")
    logger.log_hyperparams({"lr": 1})
    logger.log_metrics({"loss": 1.0}, step=1)
    logger.experiment.log({"anything": 1})  # a no-op object, as Lightning's DummyExperiment
    logger.watch(torch.nn.Linear(2, 2))
    logger.finalize("success")
    assert logger.version is None
    logger.load_state_dict({"version": "from-rank-0"})  # what the Trainer broadcasts
    assert logger.log_dir == os.path.join(str(tmp_path / "save"), logger.name, "from-rank-0")
    assert wandb.run is None and not (tmp_path / "save").exists()


def test_arguments_checked_at_construction(tmp_path, monkeypatch):
    with pytest.raises(MisconfigurationError, match=r"log_model=True, offline=True"):
        WandbLogger(offline=True, log_model=True)
    with pytest.raises(MisconfigurationError, match=r"log_model='best'.*True, False or 'all'"):
        WandbLogger(log_model="best")
    with pytest.raises(MisconfigurationError, match=r"version='a', id='b'"):
        WandbLogger(version="a", id="b")
    assert WandbLogger(dir=tmp_path).save_dir == str(tmp_path)
    with dialect.using(dialect.SURGE):
        assert WandbLogger().name == "surge_logs"
    with dialect.using(dialect.LIGHTNING):
        assert WandbLogger().name == "lightning_logs"
    monkeypatch.setenv("WANDB_PROJECT", "from_env")
    assert WandbLogger().name == "from_env" and WandbLogger(project="given").name == "given"
    assert wandb.run is None


def test_import_loads_no_wandb_and_lightning_names_it():
    code = ("import surge.loggers, surge.lightning.loggers, sys; assert 'wandb' not in sys.modules; "
            "from surge.lightning.loggers.wandb import WandbLogger as A; from surge.lightning.loggers import WandbLogger as B; "
            "from surge.loggers import WandbLogger as C; assert A is B is C; assert 'wandb' not in sys.modules")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(SRC))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
