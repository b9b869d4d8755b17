"""surge plot: PNGs from metrics.csv and TensorBoard event files, runs overlaid."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("matplotlib")

import surge
from surge.cli import main as cli_main
from surge.demos.toy import ToyModel
from surge.loggers import CSVLogger, TensorBoardLogger
from surge.plot import find_runs


def run(tmp_path, logger, steps):
    t = surge.Trainer(default_root_dir=str(tmp_path), logger=logger, max_steps=steps, log_every_n_steps=1,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0)
    t.fit(ToyModel())
    return t.log_dir


def test_plot_overlays_csv_and_tensorboard_runs(tmp_path):
    pytest.importorskip("tensorboard")
    csv_dir = run(tmp_path, CSVLogger(str(tmp_path / "logs"), name="csv"), 5)
    csv_dir2 = run(tmp_path, CSVLogger(str(tmp_path / "logs"), name="csv"), 3)
    tb_dir = run(tmp_path, TensorBoardLogger(str(tmp_path / "logs"), name="tb"), 4)

    runs = find_runs([str(tmp_path / "logs")])
    assert set(runs) == {os.path.normpath(d) for d in (csv_dir, csv_dir2, tb_dir)}
    assert [s for s, _ in runs[os.path.normpath(csv_dir)]["train_loss"]] == [1, 2, 3, 4, 5]
    assert len(runs[os.path.normpath(tb_dir)]["train_loss"]) == 4  # read back with EventAccumulator

    out = tmp_path / "charts"
    assert cli_main(["plot", str(tmp_path / "logs"), "--out", str(out)]) == 0
    png = out / "train_loss.png"
    assert png.is_file()
    import matplotlib.image as mpimg

    image = mpimg.imread(str(png))
    assert image.shape[:2] == (450, 700)  # 7 x 4.5 inches at 100 dpi
    assert image.std() > 0.01  # not a blank canvas


def test_plot_default_out_dir_and_missing_folder(tmp_path, capsys):
    log_dir = run(tmp_path, CSVLogger(str(tmp_path), name="one"), 2)
    assert cli_main(["plot", log_dir]) == 0
    assert os.path.isfile(os.path.join(log_dir, "plots", "train_loss.png"))
    with pytest.raises(SystemExit) as err:
        cli_main(["plot", str(tmp_path / "nowhere")])
    assert err.value.code == 2
    assert "no such folder" in capsys.readouterr().err
