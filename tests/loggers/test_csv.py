"""CSVLogger: real files in a temp folder, read back with the csv module."""
import csv
import os

import pytest
import torch
import yaml

import surge
from surge.demos.toy import ToyModel
from surge.loggers import CSVLogger, Logger


def read_rows(logger):
    with open(os.path.join(logger.log_dir, "metrics.csv"), newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, list(reader)


def test_nothing_created_at_construction(tmp_path):
    logger = CSVLogger(tmp_path / "logs", name="exp", flush_logs_every_n_steps=1)
    # Asking where it will write must not create anything either: other ranks do this.
    assert logger.log_dir == os.path.join(str(tmp_path / "logs"), "exp", "version_0")
    assert logger.state_dict() == {"version": 0}
    assert not (tmp_path / "logs").exists()
    logger.log_metrics({"loss": 1.0}, step=0)
    assert (tmp_path / "logs" / "exp" / "version_0" / "metrics.csv").is_file()


def test_version_auto_increments_over_existing_folders(tmp_path):
    for folder in ("version_0", "version_3", "version_x"):
        (tmp_path / "exp" / folder).mkdir(parents=True)
    (tmp_path / "exp" / "version_9").write_text("a file, not a run folder")
    logger = CSVLogger(tmp_path, name="exp")
    assert logger.version == 4
    assert logger.log_dir == os.path.join(str(tmp_path), "exp", "version_4")
    # Once decided the version stays, even after its folder appears.
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    assert logger.version == 4
    assert CSVLogger(tmp_path, name="exp").version == 5


def test_version_and_name_forms(tmp_path):
    assert CSVLogger(tmp_path, name="exp").version == 0
    assert CSVLogger(tmp_path, name="exp", version=7).log_dir == os.path.join(str(tmp_path), "exp", "version_7")
    assert CSVLogger(tmp_path, name="exp", version="run-a").log_dir == os.path.join(str(tmp_path), "exp", "run-a")
    for empty in ("", None):
        logger = CSVLogger(tmp_path, name=empty)
        assert logger.root_dir == str(tmp_path)
        assert logger.log_dir == os.path.join(str(tmp_path), "version_0")
    assert isinstance(CSVLogger(tmp_path), Logger)


def test_new_keys_widen_the_header(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    logger.log_metrics({"loss": 0.5}, step=0)
    logger.log_metrics({"loss": 0.25, "val_acc": 0.75, "epoch": 0}, step=1)
    logger.log_metrics({"loss": 0.125}, step=2)
    logger.finalize("success")
    header, rows = read_rows(logger)
    assert header == ["step", "loss", "val_acc", "epoch"]
    assert rows == [["0", "0.5", "", ""], ["1", "0.25", "0.75", "0"], ["2", "0.125", "", ""]]


def test_rows_are_buffered_until_flush(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=3)
    path = os.path.join(logger.log_dir, "metrics.csv")
    logger.log_metrics({"a": 1.0}, step=0)
    logger.log_metrics({"b": 2.0}, step=1)  # a key added while still buffered
    assert not os.path.exists(path)
    logger.log_metrics({"a": 3.0}, step=2)  # third call: flushed
    assert read_rows(logger) == (["step", "a", "b"], [["0", "1.0", ""], ["1", "", "2.0"], ["2", "3.0", ""]])
    logger.log_metrics({"a": 4.0}, step=3)
    assert len(read_rows(logger)[1]) == 3
    logger.save()
    assert read_rows(logger)[1][-1] == ["3", "4.0", ""]


def test_values_keep_full_precision_and_tensors_convert(tmp_path):
    logger = CSVLogger(tmp_path, prefix="train")
    value = 0.1 + 0.2  # 0.30000000000000004: str(round(...)) would lose it
    logger.log_metrics({"loss": torch.tensor(0.375), "x": value, "n": 3, "flag": True}, step=5)
    logger.finalize("success")
    header, rows = read_rows(logger)
    assert header == ["step", "train-loss", "train-x", "train-n", "train-flag"]
    assert rows == [["5", "0.375", repr(value), "3", "1"]]
    assert float(rows[0][2]) == value


def test_resume_drops_overlapping_steps(tmp_path):
    # First run: writes steps 0..120 then dies (no finalize) after its last flush.
    first = CSVLogger(tmp_path, name="exp", flush_logs_every_n_steps=1)
    for step in range(0, 130, 10):
        first.log_metrics({"loss": float(step)}, step=step)
    state = first.state_dict()
    # Resumed from the checkpoint at step 100: the new run repeats steps 100..120.
    resumed = CSVLogger(tmp_path, name="exp", flush_logs_every_n_steps=2)
    resumed.load_state_dict(state)
    assert resumed.log_dir == first.log_dir
    for step in range(100, 150, 10):
        resumed.log_metrics({"loss": -float(step), "lr": 0.5}, step=step)
    resumed.finalize("success")
    header, rows = read_rows(resumed)
    assert header == ["step", "loss", "lr"]
    assert [int(r[0]) for r in rows] == list(range(0, 150, 10))
    assert rows[9] == ["90", "90.0", ""]
    assert rows[10:] == [[str(s), repr(-float(s)), "0.5"] for s in range(100, 150, 10)]


def test_resume_without_overlap_keeps_every_row(tmp_path):
    first = CSVLogger(tmp_path, version="run")
    for step in range(3):
        first.log_metrics({"loss": 1.0}, step=step)
    first.finalize("failed")
    resumed = CSVLogger(tmp_path, version=0)  # the saved version wins over the constructor's
    resumed.load_state_dict(first.state_dict())
    resumed.log_metrics({"loss": 2.0}, step=3)
    resumed.finalize("success")
    assert read_rows(resumed)[1] == [["0", "1.0"], ["1", "1.0"], ["2", "1.0"], ["3", "2.0"]]


def test_resume_after_a_checkpoint_keeps_the_rows_up_to_its_step(tmp_path):
    # The killed run wrote rows up to step 12; its checkpoint was at step 10. Under accumulation the resumed
    # run logs at step 10 again (the micro-batch after the checkpoint's optimizer step), but the checkpoint's
    # own row at step 10 is not repeated: it stays, and the rows after step 10 are replaced.
    first = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    for step in (8, 9, 10, 11, 12):
        first.log_metrics({"loss": float(step)}, step=step)
    resumed = CSVLogger(tmp_path)
    resumed.load_state_dict(first.state_dict())
    resumed.resume_after(10)
    for step in (10, 11):
        resumed.log_metrics({"loss": -float(step)}, step=step)
    resumed.finalize("success")
    assert read_rows(resumed)[1] == [["8", "8.0"], ["9", "9.0"], ["10", "10.0"], ["10", "-10.0"], ["11", "-11.0"]]
    # The same logger resumed again in this process (a second fit, from the checkpoint of step 9).
    resumed.resume_after(9)
    resumed.log_metrics({"loss": 0.5}, step=10)
    resumed.finalize("success")
    assert read_rows(resumed)[1] == [["8", "8.0"], ["9", "9.0"], ["10", "0.5"]]


def test_load_state_dict_after_writing_is_an_error(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_metrics({"loss": 1.0}, step=0)
    with pytest.raises(RuntimeError, match="before logging"):
        logger.load_state_dict({"version": 5})


def test_hparams_yaml(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams({"lr": 1e-3, "layers": (64, 32), "opt": {"name": "adam", "cls": torch.optim.Adam}})
    with open(os.path.join(logger.log_dir, "hparams.yaml")) as f:
        loaded = yaml.safe_load(f)
    assert loaded == {"lr": 1e-3, "layers": [64, 32], "opt": {"name": "adam", "cls": str(torch.optim.Adam)}}


def test_csv_logger_writes_to_an_fsspec_url():
    import fsspec

    fs = fsspec.filesystem("memory")
    root = "memory://surge-csv-test"
    try:
        first = surge.loggers.CSVLogger(root, name="exp")
        first.log_hyperparams({"lr": 0.1})
        first.log_metrics({"loss": 1.0}, step=0)
        first.save()
        first.log_metrics({"loss": 0.5, "acc": 0.75}, step=1)  # a new column: the file is rewritten
        first.save()
        assert first.log_dir == f"{root}/exp/version_0"
        with fs.open(f"{root}/exp/version_0/metrics.csv", "r") as f:
            assert f.read().splitlines() == ["step,loss,acc", "0,1.0,", "1,0.5,0.75"]
        assert surge.loggers.base.load_hparams_from_yaml(f"{root}/exp/version_0/hparams.yaml") == {"lr": 0.1}
        assert not fs.exists(f"{root}/exp/version_0/metrics.csv.tmp")
        # The next logger under the same name finds version_0 there and takes version_1.
        assert surge.loggers.CSVLogger(root, name="exp").version == 1
    finally:
        if fs.exists(root):
            fs.rm(root, recursive=True)


def test_fit_logs_to_an_fsspec_url(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    root = "memory://surge-csv-fit"
    try:
        logger = surge.loggers.CSVLogger(root)
        trainer = surge.Trainer(default_root_dir=tmp_path, logger=logger, max_epochs=2, limit_train_batches=2,
                                limit_val_batches=1, log_every_n_steps=1, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(ToyModel())
        with fs.open(f"{logger.log_dir}/metrics.csv", "r") as f:
            rows = list(csv.DictReader(f))
        assert len([r for r in rows if r.get("train_loss")]) == 4  # every step of the 2 epochs
        assert any(r.get("val_loss") for r in rows)
    finally:
        if fs.exists(root):
            fs.rm(root, recursive=True)


def test_a_new_run_in_a_used_version_folder_starts_the_file_afresh(tmp_path):
    old = CSVLogger(tmp_path, name="exp", version=0, flush_logs_every_n_steps=1)
    old.log_metrics({"loss": 9.0}, step=0)
    old.log_metrics({"loss": 8.0}, step=1)
    folder = tmp_path / "exp" / "version_0"
    new = CSVLogger(tmp_path, name="exp", version=0, flush_logs_every_n_steps=1)
    with pytest.warns(UserWarning, match=r"Experiment logs directory .*version_0 exists and is not empty"):
        _ = new.experiment
    assert not (folder / "metrics.csv").exists()  # as in Lightning; set aside until the new run writes
    assert (folder / ".metrics.csv.previous").is_file()
    new.log_metrics({"loss": 1.0}, step=0)
    assert read_rows(new) == (["step", "loss"], [["0", "1.0"]])
    assert sorted(os.listdir(folder)) == ["metrics.csv"]


def test_a_resume_brings_back_the_history_a_new_writer_set_aside(tmp_path):
    first = CSVLogger(tmp_path, name="exp", flush_logs_every_n_steps=1)
    for step in range(4):
        first.log_metrics({"loss": float(step)}, step=step)
    state = first.state_dict()
    again = CSVLogger(tmp_path, name="exp", version=0)
    with pytest.warns(UserWarning, match="exists and is not empty"):
        _ = again.experiment  # touched before the checkpoint's state arrived: the file is moved aside...
    again.load_state_dict(state)
    again.resume_after(2)  # ...and comes back: the run resumed from its checkpoint of step 2
    again.log_metrics({"loss": -3.0}, step=3)
    again.finalize("success")
    assert read_rows(again)[1] == [["0", "0.0"], ["1", "1.0"], ["2", "2.0"], ["3", "-3.0"]]
    assert not (tmp_path / "exp" / "version_0" / ".metrics.csv.previous").exists()
