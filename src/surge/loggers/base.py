"""The :class:`Logger` base class shared by every surge logger."""
from __future__ import annotations

import os
import re
from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from .. import dialect, files

HPARAMS_FILE = "hparams.yaml"
_VERSION_DIR = re.compile(r"^version_(\d+)$")


class Logger:
    """Base class for loggers: resolves the ``save_dir/name/version_N`` folder and keeps hparams.

    Subclasses implement :meth:`log_metrics` (and usually :meth:`save`, :meth:`finalize` and
    :attr:`experiment`). Nothing touches the disk until the first write, because every rank
    constructs its loggers but only global rank 0 writes.

    Example::

        class PrintLogger(Logger):
            def log_metrics(self, metrics, step):
                print(step, self._prefixed(metrics))

        logger = PrintLogger("runs", name="mnist")   # log_dir: runs/mnist/version_<next free>
    """

    @dialect.default("name", "log_folder")  # "lightning_logs" once surge.lightning is imported
    def __init__(
        self,
        save_dir: str | os.PathLike | None = None,
        name: str | None = "surge_logs",
        version: int | str | None = None,
        prefix: str = "",
    ):
        self._save_dir = os.fspath(save_dir) if save_dir is not None else None
        self._name = name or ""
        self._version = version
        # A version given by the user names the run: ckpt_path="last" looks in its folder only.
        self._explicit_version = version is not None
        self._prefix = prefix or ""
        self._experiment = None

    # ------------------------------------------------------------------ folders
    @property
    def name(self) -> str:
        """The experiment name: the folder under ``save_dir`` ("" puts versions in save_dir)."""
        return self._name

    @property
    def version(self) -> int | str:
        """The run's version; when not given, the next free ``version_N`` (decided on first use).

        Example: with ``runs/exp/version_0`` and ``version_3`` on disk, a new logger gets 4.
        """
        if self._version is None:
            # Cached, so log_dir and state_dict agree for the whole run even once
            # our own folder exists and would otherwise bump the scan.
            self._version = self._next_version()
        return self._version

    @property
    def save_dir(self) -> str | None:
        """The top folder given to the constructor (None for loggers that write no files)."""
        return self._save_dir

    @property
    def root_dir(self) -> str | None:
        """``save_dir/name``, or ``save_dir`` itself when the name is empty."""
        if self._save_dir is None:
            return None
        return os.path.join(self._save_dir, self._name) if self._name else self._save_dir

    @property
    def log_dir(self) -> str | None:
        """The run folder: ``root_dir/version_N`` for int versions, ``root_dir/<version>`` for str."""
        if self.root_dir is None:
            return None
        version = self.version
        folder = version if isinstance(version, str) else f"version_{version}"
        return os.path.join(self.root_dir, folder)

    def _next_version(self) -> int:
        root = self.root_dir
        if root is None or not files.isdir(root):
            return 0
        taken = []
        for entry in files.listdir(root):
            match = _VERSION_DIR.match(entry)
            if match and files.isdir(os.path.join(root, entry)):
                taken.append(int(match.group(1)))
        return max(taken) + 1 if taken else 0

    # ------------------------------------------------------------------ writing
    @property
    def experiment(self) -> Any:
        """The underlying writer object (None in the base class)."""
        return self._experiment

    def log_hyperparams(self, params: Mapping | Any = None) -> None:
        """Write ``params`` (a possibly nested dict; None: an empty one) to ``log_dir/hparams.yaml``.

        Values that are not plain data (numbers, strings, lists, dicts) are stored as ``str``.

        Example: ``logger.log_hyperparams({"lr": 1e-3, "model": {"hidden": 64}})``.
        """
        if self.log_dir is None:
            return
        save_hparams_to_yaml(os.path.join(self.log_dir, HPARAMS_FILE), {} if params is None else params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar ``metrics`` at ``step``; e.g. ``logger.log_metrics({"loss": 0.5}, step=10)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement log_metrics")

    def save(self) -> None:
        """Flush anything buffered to disk (no-op in the base class)."""

    def finalize(self, status: str) -> None:
        """Flush and close at the end of a run; ``status`` is "success", "failed" or "interrupted"."""
        self.save()

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        """ModelCheckpoint ``checkpoint_callback`` has written a checkpoint (called on global rank 0); a logger
        that uploads checkpoints (:class:`WandbLogger`) reads its ``last_model_path``, ``best_k_models``, ...
        (no-op in the base class)."""

    # ------------------------------------------------------------------ resume
    def resume_after(self, step: int) -> None:
        """The run resumed from a checkpoint of global step ``step`` (the Trainer calls it at the start of a
        resumed fit): a logger whose files hold per-step history keeps what it wrote up to that step and
        replaces what a killed run wrote after it (no-op in the base class; :class:`CSVLogger` does it)."""

    def state_dict(self) -> dict:
        """Plain data that lets a resumed run write into the same folder: ``{"version": N}``."""
        return {"version": self.version}

    def load_state_dict(self, state: Mapping) -> None:
        """Reuse the version from :meth:`state_dict`; must run before the logger writes anything.

        Example: ``logger.load_state_dict(ckpt["loggers"][0])`` then train on as before.
        """
        version = state.get("version")
        if version is None:
            return
        if self._experiment is not None and version != self._version:
            raise RuntimeError(
                f"{type(self).__name__}.load_state_dict(version={version!r}) came after the logger "
                f"started writing to {self.log_dir}; load logger state before logging anything"
            )
        self._version = version

    # ------------------------------------------------------------------ helpers
    def _prefixed(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """``metrics`` with keys renamed to ``"<prefix>-<key>"`` when a prefix is set."""
        if not self._prefix:
            return dict(metrics)
        return {f"{self._prefix}-{key}": value for key, value in metrics.items()}


_PLAIN = (bool, int, float, str, type(None))


def save_hparams_to_yaml(config_yaml: str | os.PathLike, hparams: Mapping | Any) -> None:
    """Write ``hparams`` (a dict or Namespace, possibly nested) to the YAML file ``config_yaml``, its folder
    made if needed; values that are not plain data are stored as ``str`` (see :func:`plain_params`)."""
    import yaml  # only needed when hparams are actually written

    folder = os.path.dirname(os.fspath(config_yaml))
    if folder:
        files.makedirs(folder)
    with files.open_file(os.fspath(config_yaml), "w") as f:
        yaml.safe_dump(plain_params(hparams), f, sort_keys=False)


def load_hparams_from_yaml(config_yaml: str | os.PathLike, use_omegaconf: bool = True) -> dict:
    """The hyperparameters in the YAML file ``config_yaml`` (as :meth:`Logger.log_hyperparams` writes them),
    a dict; ``{}`` with a warning when the file does not exist. ``use_omegaconf`` is accepted for
    Lightning's signature: surge returns a plain dict either way.

    Example: ``load_hparams_from_yaml("runs/exp/version_0/hparams.yaml")["lr"]``.
    """
    import yaml

    config_yaml = os.fspath(config_yaml)
    if not files.isfile(config_yaml):
        import warnings

        warnings.warn(f"load_hparams_from_yaml: {config_yaml!r} does not exist; returning no hyperparameters")
        return {}
    with files.open_file(config_yaml) as f:
        loaded = yaml.safe_load(f)
    return dict(loaded) if isinstance(loaded, Mapping) else {}


def plain_params(params: Any) -> Any:
    """Return ``params`` as YAML-safe plain data, turning anything unknown into ``str``.

    Example: ``plain_params({"act": torch.nn.ReLU, "dims": (1, 2)})`` ->
    ``{"act": "<class 'torch.nn...ReLU'>", "dims": [1, 2]}``.
    """
    if isinstance(params, _PLAIN):
        return params
    if isinstance(params, Mapping):
        return {k if isinstance(k, _PLAIN) else str(k): plain_params(v) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return [plain_params(v) for v in params]
    if isinstance(params, Namespace):
        return plain_params(vars(params))
    return str(params)


def to_number(value: Any, key: str) -> int | float:
    """Turn one metric value (Python number, 0-d tensor, numpy scalar) into an int or float."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    if hasattr(value, "item"):  # tensors and numpy scalars, without importing either library
        try:
            return to_number(value.item(), key)
        except (ValueError, RuntimeError) as err:
            raise ValueError(f"metric {key!r} must be a single number, got {value!r}") from err
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__}") from err


class _NoOp:
    """What :class:`DummyLogger` gives for anything: every call and attribute is a no-op, indexing gives itself."""

    def __call__(self, *args, **kwargs) -> None:
        return None

    def __getattr__(self, name: str) -> "_NoOp":
        if name.startswith("__"):
            raise AttributeError(name)
        return self

    def __getitem__(self, idx) -> "_NoOp":
        return self


class DummyLogger(Logger):
    """A logger that writes nothing and accepts anything: the Trainer's stand-in for the user's loggers under
    ``fast_dev_run``, so that code such as ``self.logger.experiment.add_image(...)`` still runs.

    Example::

        trainer = surge.Trainer(fast_dev_run=True)   # trainer.logger is a DummyLogger
        trainer.logger.experiment.add_scalar("x", 1)  # does nothing
    """

    def __init__(self) -> None:
        super().__init__(save_dir=None, name="", version="")
        self._experiment = _NoOp()

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    def log_metrics(self, *args, **kwargs) -> None:
        pass

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def __getitem__(self, idx) -> "DummyLogger":  # self.logger[0].experiment...
        return self

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return _NoOp()
