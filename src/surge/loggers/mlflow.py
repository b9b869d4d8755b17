"""MLflowLogger: params, metrics and checkpoints to an MLflow tracking store (pip install mlflow)."""
from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any, Optional

from .. import dialect
from .base import Logger, plain_params, to_number
from .tensorboard import _flatten

_STATUS = {"success": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_BAD_KEY_CHARS = re.compile(r"[^\w\-. /]")  # MLflow keys: alphanumerics, _ - . space and /
_MAX_PARAM_VALUE = 6000


def _mlflow():
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        raise ImportError("MLflowLogger needs mlflow: pip install mlflow (or pip install 'surge[mlflow]')") from err
    return MlflowClient


class MLflowLogger(Logger):
    """Log to MLflow: one MLflow run per surge run, in experiment ``experiment_name``.

    ``tracking_uri`` is any MLflow store; the default is ``$MLFLOW_TRACKING_URI`` when set, else a
    local SQLite store ``sqlite:///<save_dir>/mlflow.db`` (``save_dir`` defaults to ``./mlruns``; see it
    with ``mlflow ui --backend-store-uri <that URI>``). A ``file:<folder>`` store works too (MLflow 3
    keeps it in maintenance mode; passing a ``file:`` URI sets ``MLFLOW_ALLOW_FILE_STORE=true``).
    For a database store, a new experiment's artifacts go to ``save_dir/artifacts``.

    ``log_dir``, where surge puts checkpoints and ``config.yaml``, is ``save_dir/<experiment id>/<run id>``.
    With ``log_model=True`` the files under ``log_dir/checkpoints`` (ModelCheckpoint's default folder)
    are uploaded as the run's artifacts under ``checkpoints/`` when the run ends; ``log_artifact``
    uploads any other file. Params are flattened (``{"opt": {"lr": 1}}`` -> ``opt/lr``); characters
    MLflow does not accept in a key become ``_``. Nothing is created until the first write; only
    global rank 0 writes.

    Example::

        logger = MLflowLogger(experiment_name="mnist", tracking_uri="sqlite:///mlflow.db", log_model=True)
        surge.Trainer(logger=logger).fit(model)
        # mlflow.MlflowClient("sqlite:///mlflow.db").get_run(logger.run_id).data.metrics
    """

    @dialect.default("experiment_name", "log_folder")  # "lightning_logs" once surge.lightning is imported
    def __init__(self, experiment_name: str = "surge_logs", run_name: Optional[str] = None,
                 tracking_uri: Optional[str] = None, save_dir: Optional[str] = None,
                 tags: Optional[Mapping[str, Any]] = None, log_model: bool = False, prefix: str = "",
                 run_id: Optional[str] = None, artifact_location: Optional[str] = None) -> None:
        if tracking_uri is None:
            tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or \
                f"sqlite:///{os.path.abspath(os.path.join(save_dir or './mlruns', 'mlflow.db'))}"
        elif tracking_uri.startswith("file:"):
            # MLflow 3.x refuses file stores unless this is set ("maintenance mode"); naming a file:
            # URI here is that opt-in. Older MLflow ignores the variable.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        if save_dir is None:  # beside the store when it is local
            save_dir = _local_path(tracking_uri) or "./mlruns"
        if artifact_location is None and not tracking_uri.startswith("file:"):
            # MLflow's default for a database store is ./mlartifacts under the current folder; keep them together.
            artifact_location = "file:" + os.path.abspath(os.path.join(save_dir, "artifacts"))
        super().__init__(save_dir, name=experiment_name, version=run_id, prefix=prefix)
        self._experiment_name = experiment_name
        self._run_name = run_name
        self._tracking_uri = tracking_uri
        self._tags = dict(tags or {})
        self._log_model = log_model
        self._artifact_location = artifact_location
        self._experiment_id: Optional[str] = None
        self._run_id: Optional[str] = run_id

    # ------------------------------------------------------------------ the run
    @property
    def experiment(self):
        """The ``MlflowClient`` (the experiment and run are created on first use)."""
        if self._experiment is None:
            self._experiment = _mlflow()(tracking_uri=self._tracking_uri)
        if self._run_id is None:
            self._create_run(self._experiment)
        return self._experiment

    def _create_run(self, client) -> None:
        found = client.get_experiment_by_name(self._experiment_name)
        if found is None:
            self._experiment_id = client.create_experiment(self._experiment_name,
                                                           artifact_location=self._artifact_location)
        else:
            self._experiment_id = found.experiment_id
        tags = {k: str(v) for k, v in self._tags.items()}
        if self._run_name:
            tags.setdefault("mlflow.runName", self._run_name)
        self._run_id = client.create_run(self._experiment_id, tags=tags, run_name=self._run_name).info.run_id
        self._version = self._run_id

    @property
    def run_id(self) -> str:
        """The MLflow run's id (creates the run on first use)."""
        _ = self.experiment
        return self._run_id

    @property
    def experiment_id(self) -> str:
        _ = self.experiment
        if self._experiment_id is None:
            self._experiment_id = self._experiment.get_run(self._run_id).info.experiment_id
        return self._experiment_id

    @property
    def tracking_uri(self) -> str:
        return self._tracking_uri

    @property
    def name(self) -> str:
        return self._experiment_name

    @property
    def version(self) -> str:
        """The run id: what other ranks and a resumed run reuse."""
        return self.run_id

    @property
    def log_dir(self) -> Optional[str]:
        return os.path.join(self._save_dir, self.experiment_id, self.run_id)

    # ------------------------------------------------------------------ writing
    def log_hyperparams(self, params: Mapping | Any) -> None:
        """Log ``params`` (nested dicts are flattened with ``/``) as MLflow params."""
        from mlflow.entities import Param

        plain = plain_params(params)
        flat = _flatten(plain if isinstance(plain, dict) else {"hparams": plain})
        entries = [Param(_clean_key(k), str(v)[:_MAX_PARAM_VALUE]) for k, v in flat.items()]
        client = self.experiment
        for i in range(0, len(entries), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(self._run_id, params=entries[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log each metric at ``step``; e.g. ``logger.log_metrics({"loss": 0.5}, step=10)``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(_clean_key(k), float(to_number(v, k)), now, int(step))
                   for k, v in self._prefixed(metrics).items()]
        client = self.experiment
        for i in range(0, len(entries), 1000):
            client.log_batch(self._run_id, metrics=entries[i:i + 1000])

    def log_artifact(self, local_path: str, artifact_path: Optional[str] = None) -> None:
        """Upload a file or a folder to the run's artifacts."""
        if os.path.isdir(local_path):
            self.experiment.log_artifacts(self._run_id, local_path, artifact_path)
        else:
            self.experiment.log_artifact(self._run_id, local_path, artifact_path)

    def finalize(self, status: str) -> None:
        """Upload checkpoints (``log_model=True``) and mark the run FINISHED, FAILED or KILLED."""
        if self._experiment is None and self._run_id is None:
            return  # never wrote anything: create no empty run
        client = self.experiment
        ckpt_dir = os.path.join(self.log_dir, "checkpoints")
        if self._log_model and os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
            client.log_artifacts(self._run_id, ckpt_dir, "checkpoints")
        client.set_terminated(self._run_id, _STATUS.get(status, "FINISHED"))

    def load_state_dict(self, state: Mapping) -> None:
        """Continue the saved run (its run id) instead of starting a new one."""
        run_id = state.get("version")
        if run_id is None:
            return
        if self._run_id is not None and run_id != self._run_id and self._experiment is not None:
            raise RuntimeError(f"MLflowLogger.load_state_dict(run {run_id!r}) came after run {self._run_id!r} was "
                               f"created; load logger state before logging anything")
        self._run_id = self._version = run_id


def _clean_key(key: str) -> str:
    return _BAD_KEY_CHARS.sub("_", str(key))


def _local_path(uri: str) -> Optional[str]:
    """The folder of a ``file:`` store, or the folder of an SQLite file."""
    if uri.startswith("file:"):
        path = uri[len("file:"):]
        return path[2:] if path.startswith("//") else path
    if uri.startswith("sqlite:///"):
        return os.path.dirname(os.path.abspath(uri[len("sqlite:///"):]))
    return None
