"""CSVLogger: metrics to ``log_dir/metrics.csv``, hyperparameters to ``log_dir/hparams.yaml``."""
from __future__ import annotations

import csv
import os
from collections.abc import Mapping

from .. import dialect, files
from .base import HPARAMS_FILE, Logger, to_number

METRICS_FILE = "metrics.csv"
PREVIOUS_FILE = ".metrics.csv.previous"  # a new run's set-aside predecessor, until the run writes


class CSVExperimentWriter:
    """Buffers metric rows and writes them to ``metrics.csv``; what ``CSVLogger.experiment`` returns.

    The header is ``step`` followed by every metric key in order of first appearance. A key that
    shows up after rows are on disk widens the header: the file is rewritten and the old rows get
    empty cells.

    An existing ``metrics.csv`` in ``log_dir``:
    - a new run (``continues=False``: the logger got no state from a checkpoint) starts the file afresh,
      with Lightning's warning. The old file is only moved aside (``.metrics.csv.previous``), and is
      deleted at this writer's first write; until then a resume can still bring it back.
    - a resumed run (``continues=True``, or :meth:`resume_after`) keeps its rows, except those the new
      run replaces: the rows after :meth:`resume_after`'s step when the Trainer resumed from a
      checkpoint, otherwise those at or after the first step this writer logs.

    Example::

        writer = CSVExperimentWriter("runs/exp/version_0")
        writer.log_metrics({"loss": 0.25}, step=0)
        writer.save()   # runs/exp/version_0/metrics.csv: "step,loss" / "0,0.25"
    """

    NAME_METRICS_FILE = METRICS_FILE
    NAME_HPARAMS_FILE = HPARAMS_FILE

    def __init__(self, log_dir: str, continues: bool = False):
        self.log_dir = log_dir
        self.metrics_file = self.metrics_file_path = os.path.join(log_dir, METRICS_FILE)
        self._previous = os.path.join(log_dir, PREVIOUS_FILE)
        self.keys: list[str] = []  # metric columns (without "step"), in order of first appearance
        self._pending: list[dict[str, str]] = []  # rows not yet on disk
        self._disk_keys: list[str] | None = None  # header of the file on disk; None: no file yet
        self._drop_from: int | None = None  # old rows with step >= this are replaced by ours
        self._resumed_at: int | None = None  # the step of the checkpoint this run resumed from
        self._started = False
        self._wrote = False
        if continues:
            self._bring_back_previous()
        elif files.isfile(self.metrics_file):
            import warnings

            warnings.warn(f"Experiment logs directory {log_dir} exists and is not empty. Previous log files in this "
                          f"directory will be deleted when the new ones are saved!")
            files.replace(self.metrics_file, self._previous)

    def _bring_back_previous(self) -> None:
        """A resumed run: the history a new-run writer moved aside in this folder is its history again."""
        if not files.isfile(self.metrics_file) and files.isfile(self._previous):
            files.replace(self._previous, self.metrics_file)

    @property
    def metrics(self) -> list[dict[str, str]]:
        """The rows logged and not yet written (``save`` empties it)."""
        return self._pending

    @property
    def started(self) -> bool:
        """Whether any row was logged yet."""
        return self._started

    def resume_after(self, step: int) -> None:
        """This run continues a checkpoint of global step ``step``: the rows of an existing ``metrics.csv``
        up to that step stay (the run does not repeat them), the later ones are replaced by this run's.

        Example: ``writer.resume_after(100)``, then ``writer.log_metrics(...)`` from step 101 (or 100 again,
        a micro-batch after that step's optimizer step).
        """
        if not self._started:
            self._bring_back_previous()
            self._resumed_at = int(step)  # read at the first row, with the file's header
            return
        # The same writer goes on (another fit in this process): what it logged goes to disk, then the rows
        # after the checkpoint's step are dropped at the next write.
        self.save()
        if self._disk_keys is not None:
            self._drop_from = int(step) + 1

    def log_metrics(self, metrics: Mapping[str, int | float], step: int | None = None) -> None:
        """Buffer one row; ``metrics`` values must already be Python numbers. Without a step, the row's step is
        the number of rows buffered before it."""
        if step is None:
            step = len(self._pending)
        if not self._started:
            self._started = True
            self._adopt_existing(int(step) if self._resumed_at is None else self._resumed_at + 1)
        row = {}
        for key, value in metrics.items():
            if key == "step":  # the step column always holds the step argument
                continue
            if key not in self.keys:
                self.keys.append(key)
            # repr keeps every digit of a float, so values read back compare equal
            row[key] = repr(value) if isinstance(value, float) else str(value)
        row["step"] = str(int(step))
        self._pending.append(row)

    def save(self) -> None:
        """Write buffered rows: append when the header is unchanged, otherwise rewrite the file."""
        if not self._pending and self._drop_from is None:
            return
        files.makedirs(self.log_dir)
        fields = ["step"] + self.keys
        if self._disk_keys is not None and (self._disk_keys != self.keys or self._drop_from is not None):
            self._rewrite(fields)
        else:
            fresh = self._disk_keys is None
            with files.open_file(self.metrics_file, "w" if fresh else "a", newline="") as f:
                writer = csv.DictWriter(f, fields, restval="", lineterminator="\n")
                if fresh:
                    writer.writeheader()
                writer.writerows(self._pending)
        if not self._wrote:
            self._wrote = True
            files.remove(self._previous)  # this run's rows are on disk: a set-aside history goes
        self._disk_keys = list(self.keys)
        self._pending = []
        self._drop_from = None

    def _adopt_existing(self, first_step: int) -> None:
        # Only the header is read now; old rows are read once, at the rewrite in save().
        if not files.isfile(self.metrics_file):
            return
        with files.open_file(self.metrics_file, newline="") as f:
            header = next(csv.reader(f), None)
        if not header:  # empty file: write it afresh
            return
        self._disk_keys = [key for key in header if key != "step"]
        self.keys = list(self._disk_keys)
        self._drop_from = first_step

    def _rewrite(self, fields: list[str]) -> None:
        with files.open_file(self.metrics_file, newline="") as f:
            old_rows = list(csv.DictReader(f))
        if self._drop_from is not None:
            old_rows = [row for row in old_rows if not _step_at_least(row.get("step"), self._drop_from)]
        # Write beside the file and swap, so a crash mid-rewrite cannot lose the old rows.
        tmp = self.metrics_file + ".tmp"
        with files.open_file(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fields, restval="", extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(old_rows)
            writer.writerows(self._pending)
        files.replace(tmp, self.metrics_file)


def _step_at_least(step: str | None, limit: int) -> bool:
    try:
        return int(float(step)) >= limit
    except (TypeError, ValueError):  # a row without a readable step is kept
        return False


class CSVLogger(Logger):
    """Log metrics to ``save_dir/name/version_N/metrics.csv`` and hparams to ``hparams.yaml``.

    ``save_dir`` may be a URL that fsspec understands (``"s3://bucket/runs"``, ``"memory://runs"``).

    Rows are buffered and written every ``flush_logs_every_n_steps`` calls to
    :meth:`log_metrics`, and at :meth:`save` / :meth:`finalize`. Each call is one row. During fit the
    Trainer also calls :meth:`save` whenever ModelCheckpoint writes a checkpoint (and once that step's
    rows are logged) and before a preemption exit, so a run killed after a checkpoint keeps every row
    up to it.

    Example::

        logger = CSVLogger("runs", name="mnist")
        logger.log_metrics({"loss": 0.5, "epoch": 0}, step=10)
        logger.finalize("success")   # runs/mnist/version_0/metrics.csv
    """

    @dialect.default("name", "log_folder")  # "lightning_logs" once surge.lightning is imported
    def __init__(
        self,
        save_dir: str | os.PathLike,
        name: str | None = "surge_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ):
        super().__init__(save_dir, name=name, version=version, prefix=prefix)
        if flush_logs_every_n_steps < 1:
            raise ValueError(f"flush_logs_every_n_steps must be >= 1, got {flush_logs_every_n_steps}")
        self._flush_every = flush_logs_every_n_steps
        self._calls = 0
        self._continues = False  # a checkpoint's logger state was loaded: the run folder's history goes on

    @property
    def experiment(self) -> CSVExperimentWriter:
        """The :class:`CSVExperimentWriter` for ``log_dir`` (created on first use; touches no disk)."""
        if self._experiment is None:
            self._experiment = CSVExperimentWriter(self.log_dir, continues=self._continues)
        return self._experiment

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Buffer one row of ``metrics`` at ``step``; e.g. ``logger.log_metrics({"loss": 0.1}, 5)``. Without a
        step, the row's step is the number of rows buffered before it."""
        numbers = {key: to_number(value, key) for key, value in self._prefixed(metrics).items()}
        experiment = self.experiment
        experiment.log_metrics(numbers, len(experiment.metrics) if step is None else step)
        self._calls += 1
        if self._calls % self._flush_every == 0:
            self.save()

    def resume_after(self, step: int) -> None:
        """The run resumed from a checkpoint of global step ``step``: rows of ``metrics.csv`` after it are
        replaced by the new run's, rows up to it are kept (the Trainer calls this at a resumed fit)."""
        self._continues = True
        self.experiment.resume_after(step)

    def save(self) -> None:
        """Write all buffered rows to ``metrics.csv``."""
        if self._experiment is not None:
            self._experiment.save()

    def finalize(self, status: str) -> None:
        """Write all buffered rows; the file is not held open, so there is nothing to close."""
        self.save()

    def load_state_dict(self, state: Mapping) -> None:
        """Reuse the saved version; a writer that has logged nothing yet is simply re-made."""
        if self._experiment is not None and not self._experiment.started:
            self._experiment = None
        super().load_state_dict(state)
        self._continues = True
