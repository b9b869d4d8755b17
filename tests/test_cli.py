"""The ``surge`` command and SurgeCLI: configs, overrides, the saved config, and errors that name the key."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("jsonargparse")
pytest.importorskip("sklearn")  # the digits demo's data
yaml = pytest.importorskip("yaml")

from surge.cli import SurgeCLI, main  # noqa: E402
from surge.demos.digits import DigitsClassifier, DigitsDataModule  # noqa: E402

DIGITS = ["--model", "surge.demos.digits.DigitsClassifier", "--data", "surge.demos.digits.DigitsDataModule"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def _isolated_seed(monkeypatch):
    # seed_everything records the seed in the environment (for DDP ranks): keep it out of other tests.
    for name in ("SURGE_GLOBAL_SEED", "SURGE_SEED_WORKERS"):
        monkeypatch.delenv(name, raising=False)


def write_run_yaml(path, root):
    path.write_text(
        "model:\n"
        "  class_path: surge.demos.digits.DigitsClassifier\n"
        "  init_args:\n"
        "    lr: 0.005\n"
        "    channels: 8\n"
        "data:\n"
        "  class_path: surge.demos.digits.DigitsDataModule\n"
        "trainer:\n"
        "  max_epochs: 3\n"
        "  limit_val_batches: 2\n"
        "  num_sanity_val_steps: 0\n"
        f"  default_root_dir: {root}\n"
    )
    return str(path)


def state_dict_of(ckpt):
    return torch.load(ckpt, weights_only=True)["state_dict"]


def test_fit_from_config_with_overrides_saves_config_that_reproduces_the_run(tmp_path):
    run_yaml = write_run_yaml(tmp_path / "run.yaml", tmp_path)
    cli = SurgeCLI(args=["fit", "--config", run_yaml, "--trainer.max_epochs", "1",
                         "--trainer.limit_train_batches", "5", "--model.lr", "0.01", "--data.batch_size", "64",
                         *QUIET])
    # the file's values, with the flags after it winning
    assert isinstance(cli.model, DigitsClassifier) and isinstance(cli.datamodule, DigitsDataModule)
    assert cli.model.hparams.lr == 0.01 and cli.model.hparams.channels == 8
    assert cli.datamodule.hparams.batch_size == 64
    assert cli.trainer.max_epochs == 1 and cli.trainer.global_step == 5

    # the resolved config sits in the run's log folder, the seed a number
    log_dir = tmp_path / "surge_logs" / "version_0"
    assert os.path.samefile(cli.trainer.log_dir, log_dir)
    saved = yaml.safe_load((log_dir / "config.yaml").read_text())
    assert saved["model"]["class_path"] == "surge.demos.digits.DigitsClassifier"
    assert saved["model"]["init_args"] == {"channels": 8, "lr": 0.01, "weight_decay": 0.0001}
    assert saved["data"]["init_args"]["batch_size"] == 64
    assert saved["trainer"]["max_epochs"] == 1 and saved["trainer"]["limit_train_batches"] == 5
    assert isinstance(saved["seed_everything"], int) and not isinstance(saved["seed_everything"], bool)

    # `surge fit --config <that file>` runs the same thing again: same seed, same steps, same weights
    assert main(["fit", "--config", str(log_dir / "config.yaml")]) == 0
    again = tmp_path / "surge_logs" / "version_1"
    assert yaml.safe_load((again / "config.yaml").read_text()) == saved
    first, second = state_dict_of(log_dir / "checkpoints" / "last.ckpt"), state_dict_of(again / "checkpoints" / "last.ckpt")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_print_config_is_yaml_and_runs_nothing(tmp_path, capsys):
    run_yaml = write_run_yaml(tmp_path / "run.yaml", tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", run_yaml, "--trainer.max_epochs", "2", "--data.batch_size", "16",
              "--trainer.callbacks+=surge.callbacks.EarlyStopping", "--trainer.callbacks.monitor", "val_loss",
              "--print_config"])
    assert exit_info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["trainer"]["max_epochs"] == 2 and config["trainer"]["num_sanity_val_steps"] == 0
    assert config["data"]["init_args"]["batch_size"] == 16
    assert config["model"]["init_args"]["lr"] == 0.005
    assert config["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val_loss"
    assert config["ckpt_path"] is None
    assert not (tmp_path / "surge_logs").exists()


@pytest.mark.parametrize("args,named", [
    (["--trainer.max_epochz", "2"], "trainer.max_epochz: unknown key; did you mean trainer.max_epochs"),
    (["--model.lrr", "0.1"], "model.lrr: unknown key"),
    (["--trainer.max_epochs", "two"], "trainer.max_epochs: expected int"),
    (["--model.lr", "fast"], "model.lr: expected float"),
    (["--data.batch_size", "6.5"], "data.batch_size: expected int"),
    (["--model", "my_pkg.models.MyModel"], "model: cannot import 'my_pkg.models.MyModel'"),
    (["--model", "surge.demos.digits.NoSuchModel"], "model: cannot import 'surge.demos.digits.NoSuchModel'"),
    (["--model", "NoSuchModel"], "model: no class named 'NoSuchModel'"),
    (["--seed_everything", "often"], "seed_everything: expected"),
])
def test_bad_flags_exit_2_naming_the_key(args, named, capsys):
    base = list(DIGITS)
    if args[0] == "--model":
        base = base[2:]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *base, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert named in err, err


def test_bad_config_file_names_the_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epoch: 2\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad), *DIGITS])
    assert exit_info.value.code == 2
    assert "trainer.max_epoch: unknown key; did you mean trainer.max_epochs" in capsys.readouterr().err

    bad.write_text("model:\n  class_path: surge.demos.digits.DigitsClassifier\n  init_args:\n    lr: fast\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(bad)])
    assert "model.lr: expected float, got 'fast'" in capsys.readouterr().err


def test_missing_model_and_trainer_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--data", "surge.demos.digits.DigitsDataModule"])
    assert exit_info.value.code == 2 and "model" in capsys.readouterr().err
    if not torch.cuda.is_available():  # a value the types allow but the Trainer refuses: its message, named
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *DIGITS, "--trainer.accelerator", "gpu"])
        assert exit_info.value.code == 2
        assert "trainer: accelerator='gpu' but no GPU" in capsys.readouterr().err


def test_surge_cli_with_fixed_classes_for_a_users_main(tmp_path):
    cli = SurgeCLI(DigitsClassifier, DigitsDataModule, run=False, save_config=False,
                   trainer_defaults={"logger": False, "enable_checkpointing": False},
                   args=["--model.lr", "0.02", "--data.batch_size", "128", "--seed_everything", "7",
                         "--trainer.default_root_dir", str(tmp_path)])
    assert cli.subcommand is None and cli.config["seed_everything"] == 7
    assert cli.model.hparams.lr == 0.02 and cli.datamodule.hparams.batch_size == 128
    assert cli.trainer.loggers == [] and os.path.samefile(cli.trainer.default_root_dir, tmp_path)

    cli = SurgeCLI(DigitsClassifier, DigitsDataModule, trainer_defaults={"logger": False},
                   args=["validate", "--model.channels", "4", "--trainer.limit_val_batches", "2",
                         "--trainer.default_root_dir", str(tmp_path), *QUIET, "--verbose", "false"])
    assert cli.subcommand == "validate" and set(cli.result[0]) == {"val_loss", "val_acc"}
    # without a logger the run's folder is default_root_dir: the config lands there
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["channels"] == 4


def test_surge_command_and_cheap_import():
    # The console script lists the commands, and `import surge` (even surge.cli and surge.lightning)
    # loads neither jsonargparse nor yaml until a command needs them.
    code = ("import sys, surge, surge.cli, surge.lightning; "
            "print(sorted(m for m in ('jsonargparse', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    help_text = subprocess.run([os.path.join(os.path.dirname(sys.executable), "surge"), "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    for command in ("fit", "validate", "test", "predict", "demo"):
        assert f"\n  {command} " in help_text


def test_demo_run_is_reproduced_by_surge_fit_with_its_saved_config(tmp_path, monkeypatch, capsys):
    # The README's path: `surge demo` trains, saves config.yaml next to its logs, and
    # `surge fit --config` with that file trains the same model again.
    pytest.importorskip("tensorboard")
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep this process's thread count
    from surge.demos import digits

    digits.main(["--max-epochs", "1", "--devices", "1", "--no-progress-bar", "--root-dir", str(tmp_path)])
    saved = tmp_path / "surge_logs" / "version_0" / "config.yaml"
    assert f"config:      {saved}" in capsys.readouterr().out
    assert main(["fit", "--config", str(saved), "--trainer.enable_model_summary", "false"]) == 0
    first = state_dict_of(tmp_path / "surge_logs" / "version_0" / "checkpoints" / "last.ckpt")
    second = state_dict_of(tmp_path / "surge_logs" / "version_1" / "checkpoints" / "last.ckpt")
    assert all(torch.equal(first[k], second[k]) for k in first)


def write_boring_yaml(path, root):
    path.write_text(
        "seed_everything: 0\n"
        "model:\n  class_path: ToyModel\n  init_args: {lr: 0.05}\n"
        "data:\n  class_path: ToyDataModule\n"
        "trainer:\n"
        "  max_epochs: 2\n  limit_train_batches: 3\n  limit_val_batches: 2\n  num_sanity_val_steps: 0\n"
        "  enable_progress_bar: false\n  enable_model_summary: false\n"
        f"  default_root_dir: {root}\n"
        f"  logger: {{class_path: surge.loggers.CSVLogger, init_args: {{save_dir: {root}}}}}\n"
        "  callbacks:\n"
        "    - class_path: surge.callbacks.ModelCheckpoint\n"
        "      init_args: {monitor: val_loss, save_top_k: 1, save_last: true, every_n_epochs: 1}\n"
    )
    return str(path)


def test_test_with_ckpt_path_best_in_a_new_process_uses_the_runs_best_checkpoint(tmp_path, capsys):
    run_yaml = write_boring_yaml(tmp_path / "run.yaml", tmp_path)
    assert main(["fit", "--config", run_yaml]) == 0
    run = tmp_path / "surge_logs" / "version_0"
    state = next(v for k, v in torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"].items()
                 if k.startswith("ModelCheckpoint"))
    best = state["best_model_path"]
    assert os.path.isfile(best) and os.path.basename(best) != "last.ckpt"
    # A new process: nothing in memory knows the best checkpoint; the run's saved state does.
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "surge"), "test", "--config", run_yaml,
                           "--ckpt_path", "best"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"surge: test with the weights of {best} (saved at global step" in proc.stdout
    assert "test_loss" in proc.stdout and "Traceback" not in proc.stderr
    # run.yaml found the run by the model's hyperparameters; the config saved in the run's folder names the run
    # itself, whatever is changed for this command
    capsys.readouterr()
    assert main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", "best", "--verbose", "false",
                 "--model.lr", "0.5"]) == 0
    assert f"with the weights of {best}" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # the same change with run.yaml: no run of these hyperparameters
        main(["test", "--config", run_yaml, "--ckpt_path", "best", "--model.lr", "0.5"])
    assert "other hyperparameters: lr 0.5 here, 0.05 there" in capsys.readouterr().err


def test_command_errors_are_one_line_and_leave_no_empty_run_folder(tmp_path, capsys):
    run_yaml = write_boring_yaml(tmp_path / "run.yaml", tmp_path)
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    cases = [
        (["test", "--config", run_yaml, "--ckpt_path", str(tmp_path / "missing.ckpt")], "missing.ckpt' does not exist"),
        (["validate", "--config", run_yaml, "--ckpt_path", str(tmp_path / "garbage.ckpt")], "truncated or corrupt"),
        (["test", "--config", run_yaml, "--ckpt_path", "best"], 'ckpt_path="best" but no best checkpoint'),
        (["fit", "--config", run_yaml, "--ckpt_path", str(tmp_path / "missing.ckpt")], "missing.ckpt' does not exist"),
    ]
    for args, named in cases:
        try:
            code = main(args)
        except SystemExit as stop:
            code = stop.code
        err = capsys.readouterr().err
        assert code == 1, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"surge {args[0]}: error: ") and named in lines[0], err
        # nothing is left of the failed command: no version_N holding only its config
        assert not (tmp_path / "surge_logs").exists(), os.listdir(tmp_path / "surge_logs")
