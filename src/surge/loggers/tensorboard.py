"""TensorBoardLogger: metrics as TensorBoard event files, hyperparameters as ``hparams.yaml``.

``torch.utils.tensorboard`` (and with it ``tensorboard``) is imported only when the first
event file is opened, so ``import surge.loggers`` stays cheap.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from .. import dialect
from .base import Logger, plain_params, to_number


class TensorBoardLogger(Logger):
    """Log metrics with ``torch.utils.tensorboard.SummaryWriter`` under ``save_dir/name/version_N``.

    ``log_metrics`` calls ``add_scalar`` once per key; ``log_hyperparams`` writes ``hparams.yaml``
    and the same YAML as a text summary named "hparams". With ``default_hp_metric=True`` it also
    records an HParams-plugin session with a placeholder metric ``hp_metric = -1``, so the run
    appears in TensorBoard's HPARAMS tab (log a real ``hp_metric`` later to fill it in).
    Extra keyword arguments go to ``SummaryWriter`` (e.g. ``flush_secs=10``). A resumed run
    (:meth:`load_state_dict`) writes new event files into the same folder, and TensorBoard hides
    the old events at or after the first step the resumed run logs, so no step shows twice.

    Example::

        logger = TensorBoardLogger("runs", name="mnist")
        logger.log_metrics({"loss": 0.5}, step=10)
        logger.finalize("success")   # then: tensorboard --logdir runs
    """

    @dialect.default("name", "log_folder")  # "lightning_logs" once surge.lightning is imported
    def __init__(
        self,
        save_dir: str | os.PathLike,
        name: str | None = "surge_logs",
        version: int | str | None = None,
        prefix: str = "",
        default_hp_metric: bool = False,
        **summary_writer_kwargs: Any,
    ):
        super().__init__(save_dir, name=name, version=version, prefix=prefix)
        self._default_hp_metric = default_hp_metric
        self._writer_kwargs = summary_writer_kwargs
        self._resumed = False  # set by load_state_dict: the first metric step purges later old ones
        self._deferred: list[Callable[[Any], None]] = []  # writes waiting for the writer to open

    @property
    def experiment(self):
        """The ``SummaryWriter`` for ``log_dir``, opened (and the folder made) on first use."""
        if self._experiment is None:
            self._open(purge_step=None)
        return self._experiment

    def _open(self, purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # lazy: pulls in tensorboard

        os.makedirs(self.log_dir, exist_ok=True)
        kwargs = dict(self._writer_kwargs)
        if purge_step is not None:
            # Events at steps >= purge_step in older files of this folder (a run killed after
            # its last checkpoint) are hidden by TensorBoard, so repeated steps show once.
            kwargs.setdefault("purge_step", purge_step)
            _wait_for_a_newer_second(self.log_dir)
        self._experiment = SummaryWriter(log_dir=self.log_dir, **kwargs)
        self._resumed = False
        deferred, self._deferred = self._deferred, []
        for write in deferred:
            write(self._experiment)

    def _write(self, write: Callable[[Any], None]) -> None:
        # A resumed run opens its writer at the first metric step (see _open); until then
        # other writes wait, so the purge cannot hide them.
        if self._experiment is None and self._resumed:
            self._deferred.append(write)
        else:
            write(self.experiment)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Write each metric as a scalar at ``step``; e.g. ``logger.log_metrics({"acc": 0.9}, 100)``."""
        if self._experiment is None and self._resumed:
            self._open(purge_step=int(step))
        writer = self.experiment
        for key, value in self._prefixed(metrics).items():
            writer.add_scalar(key, float(to_number(value, key)), global_step=int(step))

    def log_hyperparams(self, params: Mapping | Any) -> None:
        """Write ``hparams.yaml`` and a "hparams" text summary (see the class docstring).

        Example: ``logger.log_hyperparams({"lr": 1e-3, "optim": {"name": "adam"}})``.
        """
        super().log_hyperparams(params)
        import yaml

        plain = plain_params(params)
        text = yaml.safe_dump(plain, sort_keys=False)
        # Indented lines render as a code block in TensorBoard's markdown text view.
        markdown = "".join(f"    {line}\n" for line in text.splitlines())
        self._write(lambda writer: writer.add_text("hparams", markdown))
        if self._default_hp_metric:
            flat = _flatten(plain if isinstance(plain, dict) else {"hparams": plain})
            self._write(lambda writer: _log_hparams_session(writer, flat))

    def load_state_dict(self, state: Mapping) -> None:
        """Reuse the saved version; the first step logged afterwards purges later events there."""
        super().load_state_dict(state)
        self._resumed = self._experiment is None

    def save(self) -> None:
        """Flush pending events to disk."""
        if self._experiment is not None:
            self._experiment.flush()

    def finalize(self, status: str) -> None:
        """Flush and close the event file; a later write opens a new one in the same folder."""
        if self._deferred:  # resumed, then finished without logging a metric
            self._open(purge_step=None)
        if self._experiment is not None:
            self._experiment.flush()
            self._experiment.close()
            self._experiment = None


def _wait_for_a_newer_second(log_dir: str) -> None:
    # TensorBoard reads a folder's event files in name order, and a name starts with the second
    # it was opened in; a file opened in the same second as an older one may sort before it and
    # the purge would then hit the new events. Only an in-process resume gets here; wait it out.
    seconds = []
    for name in os.listdir(log_dir):
        parts = name.split(".")
        if name.startswith("events.out.tfevents.") and len(parts) > 3 and parts[3].isdigit():
            seconds.append(int(parts[3]))
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.05)


def _log_hparams_session(writer, params: dict) -> None:
    from torch.utils.tensorboard.summary import hparams

    # The HParams plugin takes flat scalar-or-string values only.
    experiment, start, end = hparams(params, {"hp_metric": -1})
    for summary in (experiment, start, end):
        writer.file_writer.add_summary(summary)
    writer.add_scalar("hp_metric", -1, global_step=0)


def _flatten(params: Mapping, parent: str = "") -> dict[str, bool | int | float | str]:
    """``{"opt": {"lr": 1}}`` -> ``{"opt/lr": 1}``; lists and None become strings."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in params.items():
        name = f"{parent}/{key}" if parent else str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
