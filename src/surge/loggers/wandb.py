"""WandbLogger: metrics, hyperparameters and checkpoints to Weights & Biases (pip install wandb)."""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

from .. import dialect
from ..utils import MisconfigurationError, rank_zero_only, rank_zero_warn
from .base import Logger, _NoOp, plain_params

_LOG_MODEL = (True, False, "all")
# What a checkpoint artifact's metadata records of the ModelCheckpoint that wrote it (those it has).
_CHECKPOINT_FIELDS = ("monitor", "mode", "save_last", "save_top_k", "save_weights_only", "_every_n_train_steps")


class WandbLogger(Logger):
    """Log to `Weights & Biases <https://wandb.ai>`_: one W&B run per surge run, in project ``project``.

    The run starts on first use (on global rank 0 only; the other ranks get an experiment that does
    nothing), with ``wandb.init(name=name, project=project, dir=save_dir, id=version, resume="allow",
    **kwargs)``; any other ``wandb.init`` argument (``entity``, ``group``, ``tags``, ``config``, ``mode``,
    ...) goes in ``kwargs``. If a run is already active in the process (``wandb.run``), the logger uses
    it. ``offline=True`` records to local files only (``wandb sync`` uploads them later); so does the
    environment variable ``WANDB_MODE=offline``.

    Metrics are logged with ``trainer/global_step`` set to the step, which is their x-axis in the W&B
    UI. ``prefix`` puts ``"<prefix>-"`` before each key. Hyperparameters go to the run's config.

    Checkpoints (``log_model``) become W&B artifacts of type ``model``, named ``checkpoint_name``
    (default ``model-<run id>``), holding the file as ``model.ckpt`` with the aliases ``latest``, and
    ``best`` for the best one:

    - ``True``: at the end of a successful fit, the files ModelCheckpoint kept, or after each save
      when it keeps every checkpoint (``save_top_k=-1``);
    - ``"all"``: each checkpoint as soon as it is saved;
    - ``False`` (default): none.

    ``log_dir``, where ModelCheckpoint puts its files, is ``save_dir/project/<run id>`` (Lightning's
    folder for these checkpoints).

    Example::

        logger = WandbLogger(project="mnist", log_model=True)
        logger.watch(model, log="all", log_freq=100)
        surge.Trainer(logger=logger).fit(model)
        logger.experiment.finish()   # or wandb.finish(); otherwise wandb ends the run at exit
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        name: Optional[str] = None,
        save_dir: Union[str, os.PathLike] = ".",
        version: Optional[str] = None,
        offline: bool = False,
        dir: Optional[Union[str, os.PathLike]] = None,
        id: Optional[str] = None,
        anonymous: Optional[bool] = None,
        project: Optional[str] = None,
        log_model: Union[bool, str] = False,
        experiment: Any = None,
        prefix: str = "",
        checkpoint_name: Optional[str] = None,
        add_file_policy: str = "mutable",
        **kwargs: Any,
    ) -> None:
        if importlib.util.find_spec("wandb") is None:
            raise ModuleNotFoundError("WandbLogger needs wandb: pip install wandb (or pip install 'surge[wandb]')")
        if log_model not in _LOG_MODEL:
            raise MisconfigurationError(f"WandbLogger(log_model={log_model!r}): log_model must be True, False or 'all'")
        if offline and log_model:
            raise MisconfigurationError(
                f"WandbLogger(log_model={log_model!r}, offline=True): checkpoints cannot be uploaded in offline "
                f"mode. Hint: set offline=False to log your model (WANDB_MODE=offline still keeps the run local)."
            )
        if version is not None and id is not None and version != id:
            raise MisconfigurationError(f"WandbLogger(version={version!r}, id={id!r}): both name the run; give one")
        # `dir` is Lightning's other name for save_dir; it counts when save_dir is left at its default.
        root = dir if dir is not None and save_dir in (None, ".") else save_dir
        root = os.fspath(root) if root is not None else "."
        project = project or os.environ.get("WANDB_PROJECT") or dialect.active().log_folder
        super().__init__(root, name=project, version=version or id, prefix=prefix)
        self._project = project
        self._run_name = name
        self._offline = offline
        self._log_model = log_model
        self._checkpoint_name = checkpoint_name
        self.add_file_policy = add_file_policy
        self._experiment = experiment
        self._logged_model_time: dict[str, float] = {}  # checkpoint path -> mtime when it was logged
        self._checkpoint_callbacks: dict[int, Any] = {}  # ModelCheckpoints whose files go up at the end
        self._wandb_init: dict[str, Any] = {"name": name, "project": project, "dir": root,
                                            "id": version or id, "resume": "allow"}
        if anonymous is not None:  # wandb 0.2x dropped anonymous mode; pass it only when asked for
            self._wandb_init["anonymous"] = "allow" if anonymous else "never"
        if offline:
            self._wandb_init["mode"] = "offline"
        self._wandb_init.update(kwargs)

    def __getstate__(self) -> dict:
        # A Run cannot be pickled (ddp_spawn sends the logger to its workers): the copy keeps the run's id
        # and, on rank 0, continues that run with resume="allow".
        state = self.__dict__.copy()
        if self._experiment is not None and not isinstance(self._experiment, _NoOp):
            state["_version"] = self._experiment.id
            state["_wandb_init"] = dict(self._wandb_init, id=self._experiment.id)
        state["_experiment"] = None
        return state

    # ------------------------------------------------------------------ the run
    @property
    def experiment(self):
        """The ``wandb`` Run (started on first use); on ranks other than 0 an object that does nothing.

        Example: ``self.logger.experiment.log({"examples": [wandb.Image(img)]})`` in a Module.
        """
        if rank_zero_only.rank != 0:
            return _NoOp()
        if self._experiment is None:
            import wandb

            if wandb.run is not None:
                rank_zero_warn("There is a wandb run already in progress and newly created instances of "
                               "`WandbLogger` will reuse this run. If this is not desired, call `wandb.finish()` "
                               "before instantiating `WandbLogger`.")
                self._experiment = wandb.run
            else:
                os.makedirs(self._save_dir, exist_ok=True)  # wandb writes to a temporary folder otherwise
                self._experiment = wandb.init(**self._wandb_init)
                self._define_step_axis(self._experiment)
            self._version = self._experiment.id
        return self._experiment

    def _define_step_axis(self, run) -> None:
        if not hasattr(run, "define_metric"):
            return
        if self._wandb_init.get("sync_tensorboard"):
            run.define_metric("*", step_metric="global_step")  # TensorBoard's own step names the x-axis
        else:
            run.define_metric("trainer/global_step")
            run.define_metric("*", step_metric="trainer/global_step", step_sync=True)

    def watch(self, model, log: Optional[str] = "gradients", log_freq: int = 100, log_graph: bool = True) -> None:
        """Log ``model``'s gradients (``log="gradients"``), parameters (``"parameters"``) or both (``"all"``)
        as histograms every ``log_freq`` batches, and its graph (``log_graph``): ``wandb.Run.watch``.
        ``logger.experiment.unwatch(model)`` removes the hooks."""
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    @property
    def name(self) -> str:
        """The W&B project (``project``, else ``$WANDB_PROJECT``, else the default log folder name).
        The run's own display name is ``logger.experiment.name``."""
        return self._project

    @property
    def version(self) -> Optional[str]:
        """The run id. On rank 0 this starts the run if needed, so that every rank and ModelCheckpoint's
        folder agree on it; elsewhere, the id given or received from rank 0."""
        if rank_zero_only.rank == 0:
            return self.experiment.id
        return self._version

    @property
    def log_dir(self) -> str:
        """``save_dir/project/<run id>``: ModelCheckpoint writes into its ``checkpoints`` folder."""
        return os.path.join(self._save_dir, self._project, str(self.version))

    def load_state_dict(self, state: Mapping) -> None:
        """Continue the saved run (its id, with ``resume="allow"``) if no run has started yet.

        A fit resumed from a checkpoint has usually started its run already (ModelCheckpoint asks for its
        folder first): that run is kept, as in Lightning, where a resumed fit logs to a new W&B run unless
        ``id=`` names the old one.
        """
        run_id = state.get("version")
        if run_id is None:
            return
        if self._experiment is not None and not isinstance(self._experiment, _NoOp):
            if self._experiment.id != run_id:
                rank_zero_warn(f"WandbLogger: the checkpoint was logged to W&B run {run_id!r}; this fit logs to run "
                               f"{self._experiment.id!r}. Pass WandbLogger(id={run_id!r}) to continue that run.")
            return
        self._version = run_id
        self._wandb_init["id"] = run_id

    # ------------------------------------------------------------------ writing
    @rank_zero_only
    def log_hyperparams(self, params: Mapping | Any) -> None:
        """Add ``params`` (nested dicts stay nested) to the run's config; values that are not plain data are
        stored as ``str``. Example: ``logger.log_hyperparams({"lr": 1e-3, "model": {"hidden": 64}})``."""
        plain = plain_params({} if params is None else params)
        self.experiment.config.update(plain if isinstance(plain, dict) else {"hparams": plain}, allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        """Log ``metrics`` (numbers, one-element tensors, or wandb objects such as ``wandb.Image``) at ``step``.

        Example: ``logger.log_metrics({"loss": 0.5}, step=10)`` logs ``loss`` and ``trainer/global_step=10``.
        """
        values = {k: _scalar(v) for k, v in self._prefixed(metrics).items()}
        if step is not None and not self._wandb_init.get("sync_tensorboard"):
            values["trainer/global_step"] = step
        self.experiment.log(values)

    @rank_zero_only
    def log_table(self, key: str, columns: Optional[list] = None, data: Optional[list] = None,
                  dataframe: Any = None, step: Optional[int] = None) -> None:
        """Log a ``wandb.Table`` from ``columns`` and ``data`` (rows), or from a pandas ``dataframe``."""
        import wandb

        self.log_metrics({key: wandb.Table(columns=columns, data=data, dataframe=dataframe)}, step)

    @rank_zero_only
    def log_text(self, key: str, columns: Optional[list] = None, data: Optional[list] = None,
                 dataframe: Any = None, step: Optional[int] = None) -> None:
        """Log text as a table: the same arguments as :meth:`log_table`."""
        self.log_table(key, columns, data, dataframe, step)

    @rank_zero_only
    def log_image(self, key: str, images: list, step: Optional[int] = None, **kwargs: list) -> None:
        """Log images (tensors, arrays, PIL images or file paths); each keyword is a list with one value per
        image, e.g. ``caption=["cat", "dog"]``."""
        self._log_media("Image", key, images, step, kwargs)

    @rank_zero_only
    def log_audio(self, key: str, audios: list, step: Optional[int] = None, **kwargs: list) -> None:
        """Log audio (arrays or file paths); keywords as in :meth:`log_image` (e.g. ``sample_rate``)."""
        self._log_media("Audio", key, audios, step, kwargs)

    @rank_zero_only
    def log_video(self, key: str, videos: list, step: Optional[int] = None, **kwargs: list) -> None:
        """Log videos (arrays or file paths); keywords as in :meth:`log_image` (e.g. ``fps``)."""
        self._log_media("Video", key, videos, step, kwargs)

    def _log_media(self, kind: str, key: str, items: list, step: Optional[int], kwargs: dict) -> None:
        if not isinstance(items, list):
            raise TypeError(f"log_{kind.lower()}: expected a list of items for {key!r}, got {type(items).__name__}")
        for name, values in kwargs.items():
            if len(values) != len(items):
                raise ValueError(f"log_{kind.lower()}: {len(items)} items but {len(values)} values for {name!r}")
        import wandb

        make = getattr(wandb, kind)
        media = [make(item, **{name: values[i] for name, values in kwargs.items()}) for i, item in enumerate(items)]
        self.log_metrics({key: media}, step)

    def use_artifact(self, artifact: str, artifact_type: Optional[str] = None):
        """Mark ``artifact`` (``"entity/project/name:alias"``) as an input of this run and return it."""
        return self.experiment.use_artifact(artifact, type=artifact_type)

    @staticmethod
    @rank_zero_only
    def download_artifact(artifact: str, save_dir: Optional[Union[str, os.PathLike]] = None,
                          artifact_type: Optional[str] = None, use_artifact: bool = True) -> str:
        """Download ``artifact`` from the W&B server into ``save_dir`` and return the folder; with an active run
        and ``use_artifact``, the run records it as an input."""
        import wandb

        if wandb.run is not None and use_artifact:
            found = wandb.run.use_artifact(artifact)
        else:
            found = wandb.Api().artifact(artifact, type=artifact_type)
        return found.download(root=None if save_dir is None else os.fspath(save_dir))

    # ------------------------------------------------------------------ checkpoints
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        """ModelCheckpoint saved: log its new files now (``log_model="all"``, or ``True`` with
        ``save_top_k=-1``), or remember the callback for :meth:`finalize` (``True``)."""
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            self._log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """At the end of a successful fit, log the checkpoints kept for ``log_model=True``. The run itself stays
        open (a later ``trainer.test`` logs into it); wandb finishes it at exit, or call ``experiment.finish()``."""
        if status != "success" or self._experiment is None:
            return
        for callback in self._checkpoint_callbacks.values():
            self._log_checkpoints(callback)

    def _log_checkpoints(self, callback) -> None:
        """Log each checkpoint file of ``callback`` that is new or rewritten since it was last logged, oldest first."""
        import wandb

        for mtime, path, score in _new_checkpoints(callback, self._logged_model_time):
            metadata = {
                "score": score.item() if hasattr(score, "item") else score,
                "original_filename": Path(path).name,
                type(callback).__name__: {k: getattr(callback, k) for k in _CHECKPOINT_FIELDS if hasattr(callback, k)},
            }
            if not self._checkpoint_name:
                self._checkpoint_name = f"model-{self.experiment.id}"
            artifact = wandb.Artifact(name=self._checkpoint_name, type="model", metadata=metadata)
            artifact.add_file(path, name="model.ckpt", policy=self.add_file_policy)
            aliases = ["latest", "best"] if path == callback.best_model_path else ["latest"]
            self.experiment.log_artifact(artifact, aliases=aliases)
            self._logged_model_time[path] = mtime


def _new_checkpoints(callback, logged: dict[str, float]) -> list[tuple[float, str, Any]]:
    """``(mtime, path, score)`` of the callback's last, best and top-k files that exist and were not yet
    logged at their current mtime (a ``last.ckpt`` rewritten under the same name counts again), by mtime."""
    found: dict[str, Any] = {}
    if getattr(callback, "last_model_path", ""):
        found[callback.last_model_path] = getattr(callback, "current_score", None)
    if getattr(callback, "best_model_path", ""):
        found[callback.best_model_path] = getattr(callback, "best_model_score", None)
    found.update(getattr(callback, "best_k_models", {}))
    files = sorted((os.path.getmtime(p), p, s) for p, s in found.items() if os.path.isfile(p))
    return [(t, p, s) for t, p, s in files if p not in logged or logged[p] < t]


def _scalar(value: Any) -> Any:
    """A one-element tensor or numpy value as a Python number; anything else (wandb media, tensors) as it is."""
    if hasattr(value, "numel") and value.numel() == 1:
        return value.item()
    if type(value).__module__ == "numpy" and getattr(value, "size", 0) == 1:
        return value.item()
    return value
