"""Zero-edit mode: an unmodified Lightning script runs on surge under `surge run` / `python -m surge.lightning`,
in its own process and in the processes it starts; nothing is shadowed without being asked."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import surge
from surge.lightning import zero_edit

SRC = os.path.dirname(os.path.dirname(os.path.abspath(surge.__file__)))


@pytest.fixture
def zero_edit_on():
    assert not zero_edit.installed()
    zero_edit.install()
    try:
        yield
    finally:
        zero_edit.uninstall()
    assert not zero_edit.installed() and "lightning.pytorch" not in sys.modules


def test_importing_surge_lightning_shadows_nothing():
    import surge.lightning  # noqa: F401

    assert not zero_edit.installed()
    with pytest.raises(ModuleNotFoundError):
        import lightning.pytorch  # noqa: F401  (no real Lightning in this environment, and no mapping)


def test_lightnings_names_are_surges_own_objects(zero_edit_on):
    import lightning as L
    import lightning.pytorch as pl
    import pytorch_lightning
    from lightning.pytorch.callbacks.early_stopping import EarlyStopping
    from lightning.pytorch.demos.boring_classes import BoringModel
    from pytorch_lightning.loggers import CSVLogger

    import surge.lightning

    assert pl is surge.lightning and pytorch_lightning is surge.lightning
    assert L.Trainer is surge.Trainer and L.LightningModule is surge.Module and L.pytorch is surge.lightning
    assert EarlyStopping is surge.callbacks.EarlyStopping and CSVLogger is surge.loggers.CSVLogger
    assert BoringModel is surge.demos.boring.BoringModel


def test_a_path_surge_lacks_fails_with_a_message_that_says_so(zero_edit_on):
    with pytest.raises(ModuleNotFoundError, match=r"lightning.pytorch.no_such_module.*surge.lightning does not "
                                                  r"provide it \(it would be surge.lightning.no_such_module\)"):
        import lightning.pytorch.no_such_module  # noqa: F401
    with pytest.raises(ModuleNotFoundError, match=r"surge does not provide Lightning Fabric"):
        import lightning.fabric  # noqa: F401


SCRIPT = """
import sys

import torch
from torch.utils.data import DataLoader, Dataset

import lightning.pytorch as pl
from lightning.pytorch.demos.boring_classes import BoringModel


class Numbers(Dataset):  # defined in the script: a spawn worker imports the script again to unpickle it
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.full((32,), float(i))


if __name__ == "__main__":
    import surge

    assert pl.Trainer is surge.Trainer, "lightning.pytorch is not surge.lightning"
    loader = DataLoader(Numbers(), batch_size=2, num_workers=1, multiprocessing_context="spawn")
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(BoringModel(), train_dataloaders=loader)
    print("args", sys.argv[1:], "steps", trainer.global_step, "file", __file__.endswith("train.py"))
    if "--fail" in sys.argv:
        raise ValueError("the script's own error")
"""


def _run(tmp_path, *command):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    env.pop("SURGE_ZERO_EDIT", None)
    return subprocess.run([sys.executable, *command], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)


def test_surge_run_runs_an_unmodified_script_and_its_spawn_workers(tmp_path):
    done = _run(tmp_path, "-m", "surge.cli", "run", "train.py", "--lr", "0.1")
    assert done.returncode == 0, done.stderr
    assert "args ['--lr', '0.1'] steps 4 file True" in done.stdout


def test_python_m_surge_lightning_gives_the_scripts_exit_status_and_traceback(tmp_path):
    done = _run(tmp_path, "-m", "surge.lightning", "train.py", "--fail")
    assert done.returncode == 1
    assert "steps 4" in done.stdout
    assert "ValueError: the script's own error" in done.stderr and 'train.py", line' in done.stderr
    assert "runpy" not in done.stderr  # the traceback starts in the script


def test_the_script_runs_without_zero_edit_it_fails_to_import(tmp_path):
    done = _run(tmp_path, "train.py")
    assert done.returncode != 0 and "No module named 'lightning'" in done.stderr
