"""surge.lightning's module tree beyond core/trainer/callbacks/loggers: each Lightning path holds surge's own
object, names surge lacks are absent, and the behaviour behind the names (trainer states, early-stopping
reasons, the optimizer handle, Lightning's default names, LightningCLI) is what Lightning code relies on."""
from __future__ import annotations

import importlib
import inspect
import os
import random
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
import surge.lightning as pl
from surge import dialect
from surge.callbacks.early_stopping import EarlyStopping, EarlyStoppingReason
from surge.states import RunningStage, TrainerFn, TrainerStatus
from surge.utils import MisconfigurationError


@pytest.fixture
def surge_names():
    """surge's default names inside the test, whatever importing surge.lightning switched the process to."""
    with dialect.using(dialect.SURGE):
        yield


@pytest.fixture
def lightning_names():
    with dialect.using(dialect.LIGHTNING):
        yield


@pytest.fixture
def seed_env(monkeypatch):
    for d in (dialect.SURGE, dialect.LIGHTNING):
        monkeypatch.delenv(d.seed_env, raising=False)
        monkeypatch.delenv(d.seed_workers_env, raising=False)


def loader(n=16, seed=0):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


class Tiny(surge.Module):
    """Logs ``score`` in validation from a fixed list, one value per epoch."""

    def __init__(self, scores=(1.0,), hidden: int = 4):
        super().__init__()
        self.scores = list(scores)
        self.layer = nn.Linear(hidden, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("score", torch.tensor(self.scores[min(self.current_epoch, len(self.scores) - 1)]))

    def test_step(self, batch, batch_idx):
        self.log("test_score", torch.tensor(0.0))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return loader()

    def val_dataloader(self):
        return loader(8, seed=1)

    def test_dataloader(self):
        return loader(8, seed=2)


def trainer(tmp_path, **kw):
    args = dict(default_root_dir=str(tmp_path), max_epochs=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    args.update(kw)
    return surge.Trainer(**args)


# ---------------------------------------------------------------- module paths
LIGHTNING_PATHS = [
    ("", "cli_lightning_logo", "surge.banner.print_logo"),
    ("trainer", "seed_everything", "surge.seed.seed_everything"),
    ("trainer.states", "TrainerFn", "surge.states.TrainerFn"),
    ("trainer.states", "RunningStage", "surge.states.RunningStage"),
    ("trainer.states", "TrainerStatus", "surge.states.TrainerStatus"),
    ("trainer.states", "TrainerState", "surge.state.TrainerState"),
    ("core.optimizer", "LightningOptimizer", "surge.optim.OptimizerHandle"),
    ("callbacks.early_stopping", "EarlyStoppingReason", "surge.callbacks.early_stopping.EarlyStoppingReason"),
    ("cli", "LightningCLI", "surge.cli_lightning.LightningCLI"),
    ("cli", "SaveConfigCallback", "surge.cli.SaveConfigCallback"),
    ("utilities", "CombinedLoader", "surge.combined_loader.CombinedLoader"),
    ("utilities", "AttributeDict", "surge.hparams.AttributeDict"),
    ("utilities", "rank_zero_deprecation", "surge.warnings.rank_zero_deprecation"),
    ("utilities", "disable_possible_user_warnings", "surge.warnings.disable_possible_user_warnings"),
    ("utilities", "move_data_to_device", "surge.data.move_to_device"),
    ("utilities.combined_loader", "CombinedLoader", "surge.combined_loader.CombinedLoader"),
    ("utilities.types", "LRSchedulerConfig", "surge.optim.SchedulerConfig"),
    ("utilities.warnings", "PossibleUserWarning", "surge.warnings.PossibleUserWarning"),
    ("utilities.rank_zero", "rank_zero_debug", "surge.warnings.rank_zero_debug"),
    ("utilities.rank_zero", "rank_zero_deprecation", "surge.warnings.rank_zero_deprecation"),
    ("utilities.rank_zero", "LightningDeprecationWarning", "surge.warnings.SurgeDeprecationWarning"),
    ("utilities.seed", "isolate_rng", "surge.seed.isolate_rng"),
    ("utilities.parsing", "AttributeDict", "surge.hparams.AttributeDict"),
    ("utilities.enums", "LightningEnum", "surge.states.StrEnum"),
    ("profilers", "Profiler", "surge.profiler.Profiler"),
    ("profilers", "SimpleProfiler", "surge.profiler.SimpleProfiler"),
    ("profilers", "AdvancedProfiler", "surge.profiler.AdvancedProfiler"),
    ("profilers", "PyTorchProfiler", "surge.profiler.PyTorchProfiler"),
    ("profilers.profiler", "Profiler", "surge.profiler.Profiler"),
    ("profilers.simple", "SimpleProfiler", "surge.profiler.SimpleProfiler"),
    ("profilers.advanced", "AdvancedProfiler", "surge.profiler.AdvancedProfiler"),
    ("profilers.pytorch", "PyTorchProfiler", "surge.profiler.PyTorchProfiler"),
    ("strategies", "Strategy", "surge.strategies.strategy.Strategy"),
    ("strategies", "DDPStrategy", "surge.strategies.ddp.DDP"),
    ("strategies", "FSDPStrategy", "surge.strategies.fsdp.FSDP"),
    ("strategies", "SingleDeviceStrategy", "surge.strategies.single.SingleDevice"),
    ("strategies.strategy", "Strategy", "surge.strategies.strategy.Strategy"),
    ("strategies.ddp", "DDPStrategy", "surge.strategies.ddp.DDP"),
    ("strategies.fsdp", "FSDPStrategy", "surge.strategies.fsdp.FSDP"),
    ("strategies.single_device", "SingleDeviceStrategy", "surge.strategies.single.SingleDevice"),
    ("tuner", "Tuner", "surge.tuner.Tuner"),
    ("tuner.tuning", "Tuner", "surge.tuner.Tuner"),
    ("tuner.lr_finder", "LRFinder", "surge.tuner.LRFinder"),
    ("callbacks", "LearningRateFinder", "surge.callbacks.lr_finder.LearningRateFinder"),
    ("callbacks.lr_finder", "LearningRateFinder", "surge.callbacks.lr_finder.LearningRateFinder"),
    ("callbacks", "BatchSizeFinder", "surge.callbacks.batch_size_finder.BatchSizeFinder"),
    ("callbacks.batch_size_finder", "BatchSizeFinder", "surge.callbacks.batch_size_finder.BatchSizeFinder"),
    ("utilities.parsing", "lightning_hasattr", "surge.tuner.has_hparam"),
    ("utilities.parsing", "lightning_getattr", "surge.tuner.get_hparam"),
    ("utilities.parsing", "lightning_setattr", "surge.tuner.set_hparam"),
]


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("path, name, target", LIGHTNING_PATHS)
def test_lightnings_module_paths_hold_surges_objects(path, name, target):
    namespace: dict = {}
    exec(f"from surge.lightning{'.' + path if path else ''} import {name}", namespace)
    assert namespace[name] is _resolve(target)


@pytest.mark.parametrize("statement", [
    "from surge.lightning.profilers import XLAProfiler",
    "from surge.lightning.strategies import DeepSpeedStrategy",
    "from surge.lightning.strategies import ModelParallelStrategy",  # Lightning's is tensor parallelism
    "from surge.lightning.cli import LightningArgumentParser",
    "from surge.lightning.utilities.model_summary import ModelSummary",
    "from surge.lightning.utilities.grads import grad_norm",
    "import surge.lightning.plugins",
    "import surge.lightning.accelerators",
])
def test_names_surge_lacks_fail_to_import(statement):
    with pytest.raises(ImportError):
        exec(statement, {})


def test_lazy_submodules_are_the_attributes():
    for name in ("cli", "profilers", "strategies", "tuner"):
        assert getattr(pl, name) is importlib.import_module(f"surge.lightning.{name}")
    with pytest.raises(AttributeError, match="loops"):
        pl.loops  # noqa: B018


def test_version_is_surges_and_the_logo_prints(capsys):
    assert pl.__version__ == surge.__version__
    pl.cli_lightning_logo()
    out = capsys.readouterr().out
    assert out.startswith("\n") and "|___/" in out and "\033[" not in out  # no colour codes when not a terminal


def test_typing_names_describe_hook_signatures():
    from surge.lightning.utilities import types

    assert types.STEP_OUTPUT == types.Optional[types.Union[torch.Tensor, types.Mapping[str, types.Any]]]
    assert torch.optim.Optimizer in types.OptimizerLRScheduler.__args__
    assert types.LRSchedulerTypeTuple == (torch.optim.lr_scheduler.LRScheduler,
                                          torch.optim.lr_scheduler.ReduceLROnPlateau)


def test_environment_flags_are_bools_read_without_importing(monkeypatch):
    import importlib.util

    from surge.lightning.utilities import imports

    for name, (package, _, _) in imports._REQUIREMENTS.items():
        value = getattr(imports, name)
        assert isinstance(value, bool), name
        if importlib.util.find_spec(package) is None:
            assert value is False, name
    assert imports._TORCH_GREATER_EQUAL_2_6 is (tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 6))
    assert imports._release("2.13.0+cpu") == (2, 13, 0) and imports._release("1.0.0rc1") == (1, 0, 0)
    with pytest.raises(AttributeError):
        imports._NOT_A_FLAG  # noqa: B018


# ---------------------------------------------------------------- warnings
def test_possible_user_warning_is_a_user_warning_one_call_silences():
    from surge.warnings import PossibleUserWarning, disable_possible_user_warnings

    assert issubclass(PossibleUserWarning, UserWarning)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        disable_possible_user_warnings()
        warnings.warn("likely a mistake", PossibleUserWarning)
        warnings.warn("something else")
    assert [str(w.message) for w in seen] == ["something else"]


def test_rank_zero_deprecation_points_at_its_caller(caplog):
    from surge.warnings import SurgeDeprecationWarning, rank_zero_debug, rank_zero_deprecation

    with pytest.warns(SurgeDeprecationWarning, match="old_name is deprecated") as record:
        rank_zero_deprecation("old_name is deprecated")
    assert record[0].filename == __file__
    with caplog.at_level("DEBUG", logger="surge"):
        rank_zero_debug("a detail")
    assert "a detail" in caplog.text


# ---------------------------------------------------------------- trainer states
def test_enums_have_lightnings_values_and_compare_with_strings():
    assert [m.value for m in TrainerFn] == ["fit", "validate", "test", "predict"]
    assert [m.value for m in RunningStage] == ["train", "sanity_check", "validate", "test", "predict"]
    assert [m.name for m in TrainerStatus] == ["INITIALIZING", "RUNNING", "FINISHED", "INTERRUPTED"]
    assert TrainerFn.FITTING == "fit" == TrainerFn.FITTING and TrainerFn.FITTING == "FIT"
    assert TrainerFn.FITTING != "train" and not (TrainerFn.TESTING != "test")
    assert {"fit": 1}[TrainerFn.FITTING] == 1 and TrainerFn.FITTING in {"fit"}
    assert RunningStage.SANITY_CHECKING.evaluating and not RunningStage.TRAINING.evaluating
    assert RunningStage.SANITY_CHECKING.dataloader_prefix == "val" and RunningStage.TESTING.dataloader_prefix == "test"
    assert TrainerStatus.INTERRUPTED.stopped and not TrainerStatus.RUNNING.stopped
    assert TrainerFn.from_str("Validating") is TrainerFn.VALIDATING
    assert TrainerFn.from_str("predict", source="value") is TrainerFn.PREDICTING
    assert TrainerFn.try_from_str("train", source="value") is None
    with pytest.raises(ValueError, match=r"'train' is not a TrainerFn value; accepted: \['fit'"):
        TrainerFn.from_str("train", source="value")


class Recorder(surge.Callback):
    """(hook, fn, status, stage) as each hook sees trainer.state."""

    def __init__(self):
        self.seen = []

    def _note(self, hook, trainer):
        self.seen.append((hook, trainer.state.fn, trainer.state.status, trainer.state.stage))

    def on_sanity_check_start(self, trainer, module):
        self._note("sanity", trainer)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self._note("train", trainer)

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        self._note("val", trainer)

    def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        self._note("test", trainer)


def test_state_fn_and_status_follow_each_run(tmp_path):
    rec = Recorder()
    t = trainer(tmp_path, callbacks=[rec], limit_train_batches=1, limit_val_batches=1, limit_test_batches=1,
                num_sanity_val_steps=1)
    assert t.state.fn is None and t.state.status is TrainerStatus.INITIALIZING
    assert t.state == surge.TrainerState(status=TrainerStatus.INITIALIZING, fn=None, stage=None)
    t.fit(Tiny())
    assert {h: (fn, status) for h, fn, status, _ in rec.seen} == {
        "sanity": (TrainerFn.FITTING, TrainerStatus.RUNNING), "train": (TrainerFn.FITTING, TrainerStatus.RUNNING),
        "val": (TrainerFn.FITTING, TrainerStatus.RUNNING)}
    assert [stage for h, *_, stage in rec.seen if h == "sanity"] == [RunningStage.SANITY_CHECKING]
    assert t.state.finished and t.state.stopped and t.state.fn == TrainerFn.FITTING and t.state.stage is None
    rec.seen.clear()
    t.test(Tiny())
    assert rec.seen == [("test", TrainerFn.TESTING, TrainerStatus.RUNNING, RunningStage.TESTING)]
    assert rec.seen[0][3].value == "test"
    assert t.state.finished and t.state.fn is TrainerFn.TESTING


def test_a_run_ended_by_an_exception_is_interrupted_one_started_in_an_except_block_is_not(tmp_path):
    class Boom(surge.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            raise RuntimeError("boom")

    t = trainer(tmp_path, callbacks=[Boom()], limit_train_batches=1, limit_val_batches=0)
    with pytest.raises(RuntimeError, match="boom"):
        t.fit(Tiny())
    assert t.state.status is TrainerStatus.INTERRUPTED and t.state.stopped and not t.state.finished
    try:
        raise KeyError("the caller's own, already handled")
    except KeyError:
        t2 = trainer(tmp_path, limit_train_batches=1, limit_val_batches=0)
        t2.fit(Tiny())
    assert t2.state.status is TrainerStatus.FINISHED


def test_state_fn_can_be_set_and_checkpoints_store_plain_strings(tmp_path):
    state = surge.TrainerState()
    state.fn = "validate"
    assert state.fn is TrainerFn.VALIDATING
    with pytest.raises(ValueError, match="TrainerState.fn must be one of"):
        state.fn = "train"
    state.stage = "fit"
    state.global_step = 3
    saved = state.state_dict()
    assert saved == {"stage": "fit", "epoch": 0, "global_step": 3, "batch_idx": 0, "batches_seen": 0,
                     "should_stop": False}
    assert type(saved["stage"]) is str  # torch.load(weights_only=True) refuses enum classes
    path = tmp_path / "state.pt"
    torch.save(saved, path)
    other = surge.TrainerState()
    other.load_state_dict(torch.load(path, weights_only=True))
    assert other.stage == TrainerFn.FITTING and other.global_step == 3
    assert other.status is TrainerStatus.INITIALIZING  # restoring a stage does not start a run
    with pytest.raises(ValueError, match="TrainerState.stage must be one of"):
        other.stage = "training"


# ---------------------------------------------------------------- early stopping reasons
def fit_with(tmp_path, scores, es, max_epochs=6):
    t = trainer(tmp_path, callbacks=[es], max_epochs=max_epochs, limit_train_batches=1, limit_val_batches=1)
    t.fit(Tiny(scores))
    return t


@pytest.mark.parametrize("kwargs, scores, reason, words", [
    ({"patience": 2}, [1.0, 2.0, 3.0, 4.0], EarlyStoppingReason.PATIENCE_EXHAUSTED, "did not improve"),
    ({"stopping_threshold": 0.5}, [1.0, 0.8, 0.4, 0.3], EarlyStoppingReason.STOPPING_THRESHOLD,
     "Stopping threshold reached"),
    ({"divergence_threshold": 5.0}, [1.0, 6.0], EarlyStoppingReason.DIVERGENCE_THRESHOLD,
     "Divergence threshold reached"),
    ({}, [1.0, float("nan")], EarlyStoppingReason.NON_FINITE_METRIC, "is not finite"),
])
def test_early_stopping_says_why_it_stopped(tmp_path, kwargs, scores, reason, words):
    es = EarlyStopping("score", **kwargs)
    assert es.stopping_reason is EarlyStoppingReason.NOT_STOPPED and es.stopping_reason_message is None
    fit_with(tmp_path, scores, es)
    assert es.stopping_reason is reason and words in es.stopping_reason_message and es.stopped_epoch > 0


def test_early_stopping_that_never_stops_says_so_and_reasons_survive_a_checkpoint(tmp_path, capsys):
    es = EarlyStopping("score", patience=3, verbose=True)
    fit_with(tmp_path, [1.0, 0.9, 0.8], es, max_epochs=3)
    assert es.stopping_reason is EarlyStoppingReason.NOT_STOPPED and es.stopping_reason_message is None
    assert "score improved by 0.1 to 0.8" in capsys.readouterr().out  # verbose reports improvements
    es.stopping_reason, es.stopping_reason_message = EarlyStoppingReason.PATIENCE_EXHAUSTED, "a message"
    restored = EarlyStopping("score", patience=3)
    restored.load_state_dict(es.state_dict())
    assert (restored.stopping_reason, restored.stopping_reason_message) == (EarlyStoppingReason.PATIENCE_EXHAUSTED,
                                                                           "a message")
    older = EarlyStopping("score")  # a state saved before reasons were recorded
    older.load_state_dict({"wait_count": 2, "stopped_epoch": 5, "best_score": torch.tensor(0.5), "patience": 3})
    assert older.stopping_reason is EarlyStoppingReason.NOT_STOPPED and older.stopping_reason_message is None
    assert older.wait_count == 2 and float(older.best_score) == 0.5


def test_early_stopping_skips_standalone_validation(tmp_path):
    es = EarlyStopping("score", stopping_threshold=10.0)
    t = trainer(tmp_path, callbacks=[es], limit_val_batches=1)
    t.validate(Tiny([1.0]))
    assert es.stopping_reason is EarlyStoppingReason.NOT_STOPPED and not t.should_stop


# ---------------------------------------------------------------- LightningOptimizer
class TwoParts(surge.Module):
    """Manual optimisation with two optimizers, each toggled in turn (a GAN's shape)."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        from surge.lightning.core.optimizer import LightningOptimizer

        x, y = batch
        opt_a, opt_b = self.optimizers()
        assert isinstance(opt_a, LightningOptimizer) and opt_a.optimizer is self.trainer.optimizers[0]
        assert opt_a.param_groups is opt_a.optimizer.param_groups and opt_a.state is opt_a.optimizer.state
        for opt, owner, other in ((opt_a, self.a, self.b), (opt_b, self.b, self.a)):
            with opt.toggle_model():
                self.seen.append((all(p.requires_grad for p in owner.parameters()),
                                  any(p.requires_grad for p in other.parameters())))
                loss = nn.functional.mse_loss(self.b(self.a(x)), y)
                self.manual_backward(loss)
                opt.step()
                opt.zero_grad()

    def configure_optimizers(self):
        return torch.optim.SGD(self.a.parameters(), lr=0.01), torch.optim.SGD(self.b.parameters(), lr=0.01)


def test_optimizers_returns_lightning_optimizers_whose_toggle_model_freezes_the_others(tmp_path):
    model = TwoParts()
    t = trainer(tmp_path, limit_train_batches=2)
    t.fit(model, loader())
    assert model.seen == [(True, False)] * 4
    assert all(p.requires_grad for p in model.parameters())  # untoggled after each block
    assert t.global_step == 4


# ---------------------------------------------------------------- Lightning's default names
def test_surges_names_are_the_default_until_surge_lightning_is_imported():
    code = ("import surge.dialect as d, surge.loggers as L, inspect; a = L.CSVLogger('x').name; "
            "import surge.lightning; b = L.CSVLogger('x').name; "
            "print(d.active().name, a, b, inspect.signature(L.TensorBoardLogger).parameters['name'].default)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["lightning", "surge_logs", "lightning_logs", "lightning_logs"]


def test_loggers_and_the_default_logger_use_lightning_logs_under_lightning_names(tmp_path, lightning_names):
    from surge.loggers import CSVLogger, Logger, MLflowLogger, TensorBoardLogger

    assert CSVLogger(tmp_path).log_dir == str(tmp_path / "lightning_logs" / "version_0")
    assert TensorBoardLogger(tmp_path).name == Logger(tmp_path).name == "lightning_logs"
    assert inspect.signature(MLflowLogger).parameters["experiment_name"].default == "lightning_logs"
    assert CSVLogger(tmp_path, name="runs").name == "runs" and CSVLogger(tmp_path, name=None).name == ""
    t = surge.Trainer(default_root_dir=str(tmp_path), logger=True)
    assert t.log_dir == str(tmp_path / "lightning_logs" / "version_0")
    with dialect.using(dialect.SURGE):
        assert CSVLogger(tmp_path).name == "surge_logs"
        assert inspect.signature(CSVLogger).parameters["name"].default == "surge_logs"
    assert dialect.active() is dialect.LIGHTNING  # `using` put back what was active


def test_the_default_checkpoint_writes_last_ckpt_under_surges_names_only(tmp_path):
    from surge.demos import BoringModel

    written = {}
    for d in (dialect.SURGE, dialect.LIGHTNING):
        with dialect.using(d):
            root = tmp_path / d.name
            trainer = surge.Trainer(default_root_dir=str(root), max_epochs=2, limit_train_batches=2,
                                    limit_val_batches=1, logger=False, enable_progress_bar=False,
                                    enable_model_summary=False)
            trainer.fit(BoringModel())
            written[d.name] = sorted(p.name for p in (root / "checkpoints").iterdir())
    assert written["surge"] == ["epoch=1-step=4.ckpt", "last.ckpt"]
    assert written["lightning"] == ["epoch=1-step=4.ckpt"]  # Lightning's default: save_last=None


def test_seed_everything_writes_the_active_variable_and_reads_either(seed_env, lightning_names):
    assert surge.seed_everything(7, workers=True) == 7
    assert os.environ["PL_GLOBAL_SEED"] == "7" and os.environ["PL_SEED_WORKERS"] == "1"
    assert "SURGE_GLOBAL_SEED" not in os.environ
    assert surge.seed_everything() == 7  # None: the seed left in the environment
    with dialect.using(dialect.SURGE):
        assert surge.seed.env_seed() == 7  # surge's variable is unset: Lightning's is read
        surge.seed_everything(3, verbose=False)
        assert os.environ["SURGE_GLOBAL_SEED"] == "3" and os.environ["SURGE_SEED_WORKERS"] == "0"
        assert surge.seed.env_seed() == 3  # the active dialect's variable first
    os.environ["PL_GLOBAL_SEED"] = "seven"
    with pytest.raises(ValueError, match=r"\$PL_GLOBAL_SEED='seven' is not an integer seed"):
        surge.seed_everything()


def test_seed_everything_logs_the_seed_unless_quiet(seed_env, surge_names, caplog):
    with caplog.at_level("INFO", logger="surge"):
        surge.seed_everything(11)
        surge.seed_everything(12, verbose=False)
    assert "Seed set to 11" in caplog.text and "Seed set to 12" not in caplog.text


def test_dialect_default_must_start_from_surges_value():
    def f(name="logs"):
        return name

    with pytest.raises(ValueError, match=r"f\(name=\.\.\.\) must default to 'surge_logs'.*found 'logs'"):
        dialect.default("name", "log_folder")(f)
    with pytest.raises(ValueError, match="choose one of"):
        dialect.default("name", "color")
    with pytest.raises(TypeError, match="expects surge.dialect.SURGE or LIGHTNING"):
        dialect.use("lightning")

    @dialect.default("name", "log_folder")
    def g(*, name="surge_logs"):
        return name

    with dialect.using(dialect.LIGHTNING):
        assert g() == "lightning_logs"
    with dialect.using(dialect.SURGE):
        assert g() == "surge_logs"


def test_isolate_rng_puts_every_generator_back():
    from surge.lightning.utilities.seed import isolate_rng

    torch.manual_seed(1)
    with isolate_rng():
        inside = (torch.rand(2), np.random.rand(2), random.random())
    after = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(inside[0], after[0]) and np.array_equal(inside[1], after[1]) and inside[2] == after[2]
    with isolate_rng(include_cuda=False):
        torch.rand(1)


# ---------------------------------------------------------------- LightningCLI
class Marker(surge.Callback):
    def __init__(self):
        self.fit_started = 0

    def on_fit_start(self, trainer, module):
        self.fit_started += 1


class CLIData(surge.DataModule):
    def __init__(self, batch_size: int = 4):
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self):
        return loader()

    def val_dataloader(self):
        return loader(8, seed=1)


def cli_args(tmp_path, *extra):
    return ["--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
            "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0",
            "--trainer.logger", "false", *extra]


def test_lightning_cli_takes_lightnings_arguments(tmp_path, seed_env, surge_names):
    pytest.importorskip("jsonargparse")
    from surge.lightning.cli import LightningCLI

    marker = Marker()
    # Lightning's own examples/pytorch/basics/autoencoder.py, with surge's classes
    cli = LightningCLI(Tiny, CLIData, seed_everything_default=1234, run=False,
                       trainer_defaults={"callbacks": marker, "max_epochs": 3},
                       save_config_kwargs={"overwrite": True}, args=cli_args(tmp_path, "--model.hidden", "4"))
    assert marker in cli.trainer.callbacks and cli.trainer.max_epochs == 1 and cli.subcommand is None  # flag wins
    assert os.environ["SURGE_GLOBAL_SEED"] == "1234"
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert marker.fit_started == 1
    saved = (tmp_path / "config.yaml").read_text()
    assert "seed_everything: 1234" in saved and "Unable to serialize" not in saved  # persistent callbacks stay out
    # overwrite=False (Lightning's default): the next run into this folder refuses to replace that config
    again = LightningCLI(Tiny, CLIData, run=False, args=cli_args(tmp_path))
    with pytest.raises(RuntimeError, match=r"config.yaml exists already"):
        again.trainer.fit(again.model, datamodule=again.datamodule)
    # save_config_callback=None writes no config; run=True runs the subcommand
    other = tmp_path / "other"
    LightningCLI(Tiny, CLIData, None, seed_everything_default=False, args=["fit", *cli_args(other)])
    assert other.is_dir() and not (other / "config.yaml").exists()


@pytest.mark.parametrize("kwargs, words", [
    ({"parser_kwargs": {"default_env": True}}, "parser_kwargs"),
    ({"parser_class": object}, "parser_class"),
    ({"save_config_kwargs": {"multifile": True}}, "multifile not supported"),
    ({"save_config_callback": Marker}, "must be None or surge.cli.SaveConfigCallback"),
])
def test_lightning_cli_refuses_what_it_cannot_do(kwargs, words):
    pytest.importorskip("jsonargparse")
    from surge.lightning.cli import LightningCLI

    with pytest.raises(MisconfigurationError, match=words):
        LightningCLI(Tiny, CLIData, run=False, args=[], **kwargs)
