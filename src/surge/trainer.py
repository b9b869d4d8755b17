"""Trainer: runs fit, validate, test and predict for a Module on any strategy.

This file holds the arguments, the entry points (``fit``, ``validate``, ``test``, ``predict``) and how a
run is set up and torn down; how hooks are called is in ``trainer_hooks.py``, the public read-only
properties in ``trainer_properties.py``. The fit loop is in ``fit_loop.py``: read
``_fit_loop`` -> ``_train_epoch`` -> ``_train_batch`` there top to bottom: fetch a batch, forward and
backward through the strategy, step the optimizers, log, validate, checkpoint. Everything the run
knows about where it is lives in ``self.state`` (a :class:`TrainerState`).
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Optional, Union

import torch

from . import trainer_args as targs
from .accelerators import parse_devices, resolve_accelerator
from .callbacks.base import Callback
from .data import check_limit
from .datamodule import DataModule, _overrides
from .evaluation import STAGE_PREFIX, EvaluationLoops
from .fit_loop import FitLoop
from .module import Module
from .optim import OptimizerHandle, SchedulerConfig, install_optimizers
from .precision import normalize_precision
from .results import Results
from . import resume
from .preemption import PreemptionHandler
from .speed import SpeedSettings
from .state import TrainerState
from .trainer_checkpoint import CheckpointHandling
from .trainer_data import DataHandling
from .trainer_hooks import HookCalls
from .trainer_metrics import MetricsHandling
from .trainer_properties import TrainerProperties
from .tuner import TunerExit
from .strategies.strategy import Strategy, get_strategy
from . import faults
from .profiler import resolve_profiler
from .utils import MisconfigurationError



class Trainer(TrainerProperties, HookCalls, FitLoop, EvaluationLoops, MetricsHandling, DataHandling,
              CheckpointHandling):
    """Runs the training, evaluation and prediction of a :class:`surge.Module`.

    Example::

        trainer = surge.Trainer(max_epochs=5, precision="bf16-mixed", accumulate_grad_batches=2)
        trainer.fit(model, datamodule=data)
        trainer.test(model, datamodule=data)

    Arguments (all keyword):
        accelerator: "auto" | "cpu" | "cuda" | "gpu" | "mps".
        strategy: "auto" | "single_device" or a :class:`surge.strategies.Strategy` instance.
        devices: "auto", a count, a list of indices, or a string "0,1".
        num_nodes: machines in the run.
        precision: "32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true" (or 32, 16, "bf16").
        logger: True or None (TensorBoard if installed, else CSV), False, a logger, or a list of loggers.
        callbacks: a Callback or a list of them.
        fast_dev_run: True or N: run N (1) batches of every stage once, log nothing and save no checkpoint (a
            ModelCheckpoint or EarlyStopping passed in stays and does nothing); for a quick check.
        max_epochs / min_epochs / max_steps / min_steps: when fit stops. With neither max given, fit makes
            ``max_epochs`` 1000 and warns (``trainer.max_epochs`` is None until then, as given).
        limit_{train,val,test,predict}_batches: an int (batches) or a float (fraction) per epoch (default 1.0:
            all). ``1`` is one batch and ``1.0`` all of them: given explicitly, a log line says which.
        overfit_batches: train (unshuffled) and validate on this many training batches only.
        val_check_interval: float fraction of a training epoch, int number of training batches, or a duration
            (``"DD:HH:MM:SS"``, a ``timedelta`` or a dict of its arguments: validate at the first batch end
            that much wall-clock time after the start of training or the last validation). An int is at most an
            epoch's worth, unless ``check_val_every_n_epoch=None``, which counts batches across epochs and
            needs an int).
        check_val_every_n_epoch: validate every n epochs (None: count val_check_interval across epochs).
        num_sanity_val_steps: validation batches run before training to catch bugs early (default 2; -1: all).
        log_every_n_steps: how often per-step metrics are written to the loggers (default 50).
        enable_checkpointing / enable_progress_bar / enable_model_summary: the default callbacks (default on).
            The default ModelCheckpoint keeps the newest epoch's file, and ``last.ckpt`` under surge's names
            (not under Lightning's: :mod:`surge.dialect`).
        accumulate_grad_batches: batches whose gradients add up before one optimizer step (an int >= 1).
        gradient_clip_val / gradient_clip_algorithm: clip by global norm ("norm") or by value ("value").
        deterministic: True makes torch use deterministic algorithms ("warn": warn instead of raising).
        benchmark: sets ``torch.backends.cudnn.benchmark``.
        use_distributed_sampler: let distributed strategies put a DistributedSampler in.
        detect_anomaly: run with ``torch.autograd.detect_anomaly``.
        default_root_dir: where logs and checkpoints go when no logger or callback says (default: cwd).
        reload_dataloaders_every_n_epochs: call ``train_dataloader()`` again every n epochs.
        inference_mode: evaluate under ``torch.inference_mode`` (True) or ``torch.no_grad`` (False).
        preemption_signals: signals that make fit finish its step, save ``last.ckpt`` and exit (empty: none).
        requeue_exit_code: the exit code after such a save (143, as for SIGTERM, tells schedulers to requeue).
        preemption_grace: seconds from the first such signal to the step boundary that saves; when none comes
            in time (a stuck step or collective), exit with ``requeue_exit_code`` without saving, saying so in
            one line (the checkpoints on disk are intact). None: wait for the boundary however long it takes.
        on_nan: a NaN/inf loss "raise"s (stop, naming step and batch) or "skip"s its whole accumulation
            window as if the run had never seen it (no step, random streams put back), counted in
            ``train/nan_skipped`` (docs/reliability.md).
        profiler: None, "simple", "advanced", "pytorch" or a :class:`surge.profiler.Profiler` (docs/instruments.md).
        barebones: measure the Trainer's own overhead: no checkpointing, logger, progress bar, model summary,
            sanity check, per-step logging or ``self.log``; asking for one of them, or for fast_dev_run,
            detect_anomaly or a profiler, is an error naming it.
        compile: True or a dict of ``torch.compile`` arguments: compile the module's forward (``self(x)``) at
            setup; ``self.log`` in ``training_step`` stays outside the graph (docs/speed.md).
        fuse_optimizers: on CUDA, Adam/AdamW/SGD built without ``fused=``/``foreach=`` use their fused kernels
            (default True; the CPU keeps the optimizer as written).
        allow_tf32: TF32 float32 matmuls; None (default): on for Ampere and newer GPUs, with a one-line notice.
        cuda_graphs: replay the training forward+backward from a CUDA graph (one GPU, static shapes).

    Environment variables give defaults to any argument not passed: ``PL_TRAINER_MAX_EPOCHS=3`` (Lightning's
    spelling) or ``SURGE_TRAINER_MAX_EPOCHS=3`` (which wins over it); values read as Python literals
    (``3``, ``0.5``, ``False``, ``None``, ``[0, 1]``), anything else as a string (``PL_TRAINER_ACCELERATOR=cpu``).
    docs/lightning.md, "Trainer arguments".
    """

    @targs.env_defaults
    def __init__(
        self,
        *,
        accelerator: str = "auto",
        strategy: Union[str, Strategy] = "auto",
        devices: Union[int, str, list] = "auto",
        num_nodes: int = 1,
        precision: Union[str, int] = "32-true",
        logger: Any = None,
        callbacks: Union[Callback, list, None] = None,
        fast_dev_run: Union[bool, int] = False,
        max_epochs: Optional[int] = None,
        min_epochs: Optional[int] = None,
        max_steps: int = -1,
        min_steps: Optional[int] = None,
        limit_train_batches: Union[int, float, None] = None,
        limit_val_batches: Union[int, float, None] = None,
        limit_test_batches: Union[int, float, None] = None,
        limit_predict_batches: Union[int, float, None] = None,
        overfit_batches: Union[int, float] = 0.0,
        val_check_interval: Union[int, float, None] = None,
        check_val_every_n_epoch: Optional[int] = 1,
        num_sanity_val_steps: Optional[int] = None,
        log_every_n_steps: Optional[int] = None,
        enable_checkpointing: Optional[bool] = None,
        enable_progress_bar: Optional[bool] = None,
        enable_model_summary: Optional[bool] = None,
        accumulate_grad_batches: int = 1,
        gradient_clip_val: Optional[Union[int, float]] = None,
        gradient_clip_algorithm: str = "norm",
        deterministic: Union[bool, str, None] = None,
        benchmark: Optional[bool] = None,
        use_distributed_sampler: bool = True,
        detect_anomaly: bool = False,
        default_root_dir: Optional[str] = None,
        reload_dataloaders_every_n_epochs: int = 0,
        inference_mode: bool = True,
        profiler: Any = None,
        barebones: bool = False,
        preemption_signals=("SIGTERM", "SIGUSR1"),
        requeue_exit_code: int = 143,
        preemption_grace: Optional[float] = 30.0,
        on_nan: str = "raise",
        compile: Union[bool, dict] = False,
        fuse_optimizers: bool = True,
        allow_tf32: Optional[bool] = None,
        cuda_graphs: bool = False,
        **legacy,
    ) -> None:
        known = set(inspect.signature(Trainer.__init__).parameters) - {"self", "legacy"}
        modern = targs.translate_legacy(legacy, known)
        accelerator = modern.get("accelerator", accelerator)
        devices = modern.get("devices", devices)
        self._resume_from = modern.get("_resume_from")
        use_distributed_sampler = modern.get("use_distributed_sampler", use_distributed_sampler)
        enable_checkpointing = modern.get("enable_checkpointing", enable_checkpointing)
        enable_progress_bar = modern.get("enable_progress_bar", enable_progress_bar)
        enable_model_summary = modern.get("enable_model_summary", enable_model_summary)
        switches = targs.resolve_barebones(barebones, dict(
            enable_checkpointing=enable_checkpointing, logger=logger, enable_progress_bar=enable_progress_bar,
            log_every_n_steps=log_every_n_steps, enable_model_summary=enable_model_summary,
            num_sanity_val_steps=num_sanity_val_steps, fast_dev_run=fast_dev_run, detect_anomaly=detect_anomaly,
            profiler=profiler))
        enable_checkpointing, logger, enable_progress_bar = (switches[k] for k in (
            "enable_checkpointing", "logger", "enable_progress_bar"))
        log_every_n_steps, enable_model_summary, num_sanity_val_steps = (switches[k] for k in (
            "log_every_n_steps", "enable_model_summary", "num_sanity_val_steps"))
        self.barebones = barebones

        # ---- where the run happens
        self._accelerator = resolve_accelerator(accelerator)
        self._device_ids = parse_devices(devices, self._accelerator)
        self.num_nodes = targs.check_int("num_nodes", num_nodes, 1)
        self.precision = normalize_precision(precision)
        if strategy == "auto" and len(self._device_ids) * self.num_nodes > 1:
            strategy = "ddp"
        self.strategy: Strategy = get_strategy(strategy)
        self.strategy.configure(self._accelerator, self._device_ids, self.num_nodes, self.precision)

        # ---- how long and how often
        self.fast_dev_run = fast_dev_run = targs.check_fast_dev_run(fast_dev_run)
        # max_epochs stays None (not given) until fit, which makes it 1000 unless max_steps bounds the run.
        self.max_epochs = targs.check_run_length("max_epochs", max_epochs)
        self.min_epochs = targs.check_run_length("min_epochs", min_epochs)
        self.max_steps = targs.check_run_length("max_steps", max_steps)
        self.min_steps = targs.check_run_length("min_steps", min_steps)
        self.overfit_batches = check_limit(targs.batch_limit(overfit_batches, "overfit_batches"), "overfit_batches")
        # fast_dev_run and overfit_batches replace some of these limits
        (self.limit_train_batches, self.limit_val_batches, self.limit_test_batches,
         self.limit_predict_batches) = targs.batch_limits(
            limit_train_batches, limit_val_batches, limit_test_batches, limit_predict_batches,
            overfit_batches=self.overfit_batches, fast_dev_run=fast_dev_run)
        self.check_val_every_n_epoch = targs.check_int("check_val_every_n_epoch", check_val_every_n_epoch, 1, allow_none=True)
        self.val_check_interval = targs.check_val_check_interval(val_check_interval, self.check_val_every_n_epoch)
        # A duration: validate at the first batch end once that much time has passed since the last validation.
        self._val_check_seconds = targs.duration_seconds(self.val_check_interval, "val_check_interval")
        self._last_val_time = 0.0
        self.num_sanity_val_steps = targs.check_int("num_sanity_val_steps", num_sanity_val_steps, -1)
        self.log_every_n_steps = targs.check_int("log_every_n_steps", log_every_n_steps, 0 if barebones else 1)
        self.accumulate_grad_batches = targs.check_accumulate_grad_batches(accumulate_grad_batches)
        self.reload_dataloaders_every_n_epochs = targs.check_int(
            "reload_dataloaders_every_n_epochs", reload_dataloaders_every_n_epochs, 0)
        if gradient_clip_val is not None and (isinstance(gradient_clip_val, bool)
                                              or not isinstance(gradient_clip_val, (int, float)) or gradient_clip_val < 0):
            raise MisconfigurationError(f"gradient_clip_val must be a number >= 0 or None, got {gradient_clip_val!r}")
        self.gradient_clip_val = gradient_clip_val or None
        self.gradient_clip_algorithm = targs.check_choice("gradient_clip_algorithm", gradient_clip_algorithm, ("norm", "value"))
        if fast_dev_run:
            n = int(fast_dev_run)
            self.max_epochs, self.max_steps, self.num_sanity_val_steps = 1, n, 0
            self.val_check_interval, self.check_val_every_n_epoch, self._val_check_seconds = 1.0, 1, None
            # The loggers become one DummyLogger (none stays none): code that writes to self.logger still runs.
            # ModelCheckpoint and EarlyStopping stay, and do nothing (they read fast_dev_run).
            if logger is not False:
                from .loggers import DummyLogger

                logger = [DummyLogger()]
            targs.info(f"surge: fast_dev_run={fast_dev_run!r}: every stage runs {n} batch(es), once; nothing is "
                       f"logged or checkpointed")

        # ---- switches
        for name, value in (("enable_checkpointing", enable_checkpointing), ("enable_progress_bar", enable_progress_bar),
                            ("enable_model_summary", enable_model_summary), ("use_distributed_sampler", use_distributed_sampler),
                            ("detect_anomaly", detect_anomaly), ("inference_mode", inference_mode)):
            targs.check_bool(name, value)
        self.use_distributed_sampler = use_distributed_sampler
        self.strategy.use_distributed_sampler = use_distributed_sampler
        self.detect_anomaly = detect_anomaly
        self.inference_mode = inference_mode
        self._speed = SpeedSettings(compile=compile, fuse_optimizers=fuse_optimizers, allow_tf32=allow_tf32,
                                    cuda_graphs=cuda_graphs, strategy=self.strategy,
                                    accumulate_grad_batches=self.accumulate_grad_batches)
        self.profiler = resolve_profiler(profiler)
        self.deterministic = deterministic
        targs.check_choice("deterministic", deterministic, (None, True, False, "warn"))
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=deterministic == "warn")
            torch.backends.cudnn.deterministic = True
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if benchmark is not None:
            torch.backends.cudnn.benchmark = targs.check_bool("benchmark", benchmark)
        if default_root_dir is not None and not isinstance(default_root_dir, (str, os.PathLike)):
            raise MisconfigurationError(f"default_root_dir must be a path, got {default_root_dir!r}")
        self.default_root_dir = os.fspath(default_root_dir) if default_root_dir is not None else os.getcwd()

        # ---- loggers and callbacks
        self.loggers = targs.build_loggers(logger, self.default_root_dir)
        self.callbacks = targs.build_callbacks(callbacks, enable_checkpointing, enable_progress_bar, enable_model_summary,
                                               default_checkpoint=enable_checkpointing and not fast_dev_run)

        # ---- run state
        self.state = TrainerState()
        self.module: Optional[Module] = None
        self.datamodule: Optional[DataModule] = None
        self.optimizers: list = []
        self.lr_scheduler_configs: list[SchedulerConfig] = []
        self._optimizer_handles: list[OptimizerHandle] = []
        self._results: Optional[Results] = None
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.logged_metrics: dict[str, torch.Tensor] = {}
        self.progress_bar_metrics: dict[str, torch.Tensor] = {}
        # The loaders the loops read (flat lists) and as the user gave them (the *_dataloaders properties).
        self._train_loader = self._train_shown = None
        self._val_loaders = self._val_shown = self._test_loaders = self._test_shown = None
        self._predict_loaders = self._predict_shown = None
        self._val_source = False  # whether this fit validates: a validation_step and val data
        self._resume_rng = None
        self.num_training_batches: Union[int, float] = 0
        self.num_val_batches: list = []
        self.num_test_batches: list = []
        self.num_predict_batches: list = []
        self.num_sanity_val_batches: list = []
        self._epoch_finished = False
        self._epoch_cut_short = False  # see FitLoop._run_epochs and current_epoch
        self._batch_open = False  # a training batch has started and not yet ended
        self._batches_of_last_epoch = 0  # the batches the epoch that ended last ran
        self._resume_position: Optional[dict] = None  # where a mid-epoch checkpoint left the data
        self._epoch_loader_state: Optional[dict] = None
        self._tracker = None
        self._preemption = PreemptionHandler(preemption_signals, requeue_exit_code, preemption_grace)
        self._grads_pending: set[int] = set()  # indices of optimizers holding gradients not yet stepped
        self._ckpt_path: Optional[str] = None
        self._hooks: dict[str, list] = {}
        self._nonfinite_step: Optional[torch.Tensor] = None
        self._nan = faults.NanPolicy(on_nan)
        self._logger_guard = faults.LoggerGuard()  # a failing logger warns once; the run goes on

    # ================================================================== entry points
    def fit(self, model: Module, train_dataloaders=None, val_dataloaders=None, datamodule: Optional[DataModule] = None,
            ckpt_path: Optional[str] = None) -> None:
        """Train ``model``; validate during training when it has ``validation_step`` and val data.

        ``ckpt_path`` resumes: "last" (the newest checkpoint of this run's folders; starts fresh with a
        warning if there is none), "best", or a file path.
        """
        if isinstance(train_dataloaders, DataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        self._attach("fit", model, datamodule, train=train_dataloaders, val=val_dataloaders)
        if ckpt_path is None and self._resume_from is not None:
            ckpt_path = self._resume_from
        self.max_epochs = targs.fit_epoch_limits(self.max_epochs, self.max_steps)
        if self.barebones:  # no progress bar: say once that the run has started
            targs.info("surge: `Trainer(barebones=True)` fit started; there is no progress bar, so print progress "
                       "from the module if you want to see it")
        return self.strategy.launch(self._run, "fit", ckpt_path)

    def validate(self, model: Optional[Module] = None, dataloaders=None, ckpt_path: Optional[str] = None,
                 verbose: bool = True, datamodule: Optional[DataModule] = None) -> list[dict]:
        """Run one validation epoch; return the epoch metrics, one dict per dataloader."""
        return self._evaluate_entry("validate", model, dataloaders, ckpt_path, verbose, datamodule)

    def test(self, model: Optional[Module] = None, dataloaders=None, ckpt_path: Optional[str] = None,
             verbose: bool = True, datamodule: Optional[DataModule] = None) -> list[dict]:
        """Run one test epoch; return the epoch metrics, one dict per dataloader."""
        return self._evaluate_entry("test", model, dataloaders, ckpt_path, verbose, datamodule)

    def predict(self, model: Optional[Module] = None, dataloaders=None, datamodule: Optional[DataModule] = None,
                return_predictions: bool = True, ckpt_path: Optional[str] = None):
        """Run ``predict_step`` over the data; return the outputs in order (a list per dataloader
        when there are several)."""
        if isinstance(dataloaders, DataModule):
            datamodule, dataloaders = dataloaders, None
        self._attach("predict", model or self.module, datamodule, predict=dataloaders)
        self._verbose, self._return_predictions = False, return_predictions
        return self.strategy.launch(self._run, "predict", ckpt_path)

    def _evaluate_entry(self, stage, model, dataloaders, ckpt_path, verbose, datamodule):
        if isinstance(dataloaders, DataModule):
            datamodule, dataloaders = dataloaders, None
        model = model or self.module
        if model is None:
            raise MisconfigurationError(f"trainer.{stage}() needs a model: pass one, or call fit() first")
        if dataloaders is None and datamodule is None:
            datamodule = self.datamodule  # after fit(datamodule=...), test() uses the same data
        self._attach(stage, model, datamodule, **{"val" if stage == "validate" else "test": dataloaders})
        self._verbose = verbose
        return self.strategy.launch(self._run, stage, ckpt_path)

    # ================================================================== run set-up shared by all stages
    def _attach(self, stage: str, model, datamodule, train=None, val=None, test=None, predict=None) -> None:
        if not isinstance(model, Module):
            raise MisconfigurationError(
                f"trainer.{stage}() expects a surge.Module as its model, got {type(model).__name__}"
                + (" (a plain torch.nn.Module: subclass surge.Module and add training_step/configure_optimizers)"
                   if isinstance(model, torch.nn.Module) else "")
            )
        if datamodule is not None and not isinstance(datamodule, DataModule):
            raise MisconfigurationError(f"datamodule must be a surge.DataModule, got {type(datamodule).__name__}")
        given = [x for x in (train, val, test, predict) if x is not None]
        if datamodule is not None and given:
            raise MisconfigurationError(f"trainer.{stage}(): pass dataloaders or a datamodule, not both")
        if stage == "fit":
            _require_hook(model, "training_step")
            _require_hook(model, "configure_optimizers")
        if stage in ("validate", "test") and not _has_step(model, f"{STAGE_PREFIX[stage]}_step"):
            raise MisconfigurationError(f"trainer.{stage}() needs {type(model).__name__}.{STAGE_PREFIX[stage]}_step, which is not defined")
        self.module = model
        model.trainer = self
        self.datamodule = datamodule
        if datamodule is not None:
            datamodule.trainer = self
        self._given_loaders = {"train": train, "val": val, "test": test, "predict": predict}
        self.state.stage = stage

    def _run(self, stage: str, ckpt_path: Optional[str]):
        """Everything a stage does, in the process (or each process) that runs it."""
        strategy, module = self.strategy, self.module
        strategy.setup_environment()
        self._agree_on_log_dir()
        self._hooks.clear()
        self._quiet = frozenset()  # the batch hooks nobody listens to: known once an epoch starts (fit_loop)
        self._direct_zero_grad = self._direct_step = self._direct_optimizer = False  # (the same)
        # On the CPU with no transfer hook overridden, moving a batch is a no-op: skip the walk over it.
        self._transfer_is_noop = strategy.root_device.type == "cpu" and self.datamodule is None and not any(
            _overrides(self.module, name, Module) for name in
            ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"))
        self._results = Results(stage, strategy)
        try:
            self._prepare_data()
            self._call_setup(stage)
            module.configure_model()
            strategy.setup_module(module)
            self._speed.setup_module(self)  # TF32; compile or CUDA-graph the forward
            if stage == "fit":
                # The loaders are requested by the fit loop, when Lightning requests them (or here, by
                # configure_optimizers reading estimated_stepping_batches).
                self._prepare_fit_data()
                self._configure_optimizers()
                self._speed.setup_optimizers(self)  # fused kernels on CUDA: before a checkpoint loads their state
            self._load_for_stage(stage, ckpt_path)
            if self.profiler is not None:  # here: a resume may have changed log_dir, where traces go
                self.profiler.setup(self, stage)
            if stage == "fit":
                self._preemption.install(distributed=self.world_size > 1)
                result = self._fit_loop()
            elif stage == "predict":
                result = self._predict_loop()
            else:
                result = self._evaluate_stage(stage)
            self._call_teardown(stage)
            status = "success"
            return result
        except TunerExit:  # a Tuner's finder has searched: the stage ends here, as a successful run
            self._call_teardown(stage)
            status = "success"
            return None
        except BaseException as err:
            status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            faults.name_the_callback(err, self.callbacks)  # the user sees which callback raised
            explained = faults.explain_oom(err, self)  # out of memory: where, how much, what to try
            for cb in self.callbacks:
                cb.on_exception(self, module, explained or err)
            if explained is not None:
                raise explained from err
            raise
        finally:
            if self.profiler is not None:
                self.profiler.teardown(stage)
            if stage == "fit":
                self._preemption.uninstall(wait=status == "success")
                resume.uninstall(self._train_loader)
                self._release_run_folders()  # another process's ckpt_path="last" may take this run's folder now
            if stage == "fit" and self.is_global_zero:
                for lg in self.loggers:
                    self._logger_guard.call(lg, "finalize", status)
            self._results = None
            self.state.stage = None
            strategy.teardown()

    def _agree_on_log_dir(self) -> None:
        """Every rank builds its loggers, but only rank 0 looks on disk for the next free ``version_N``
        and tells the others, so that ``log_dir`` (and ModelCheckpoint's folder under it) is the same everywhere."""
        if self.world_size > 1:
            for lg in self.loggers:
                version = self.strategy.broadcast(lg.version if self.is_global_zero else None)
                if not self.is_global_zero:
                    lg.load_state_dict({"version": version})

    def _prepare_data(self) -> None:
        dm = self.datamodule
        if dm is None:
            return
        # prepare_data downloads; it runs in one process per machine (or overall) while the others wait.
        per_node = getattr(dm, "prepare_data_per_node", True)
        if (self.local_rank == 0) if per_node else self.is_global_zero:
            dm.prepare_data()
        self.strategy.barrier("prepare_data")

    def _configure_optimizers(self) -> None:
        install_optimizers(self)

# ====================================================================== module checks
def _has_step(module, name: str) -> bool:
    return callable(getattr(module, name, None))


def _require_hook(module, name: str) -> None:
    fn = getattr(type(module), name, None)
    if fn is None or fn is getattr(Module, name):
        raise MisconfigurationError(f"{type(module).__name__} does not define {name}(); a surge.Module needs "
                                    f"training_step() and configure_optimizers() to be trained")
