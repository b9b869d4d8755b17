"""Hyperparameter capture shared by Module and DataModule (``save_hyperparameters``)."""
from __future__ import annotations

import inspect
from argparse import Namespace
from typing import Any


class AttributeDict(dict):
    """A dict whose keys read as attributes too: ``hparams.lr == hparams["lr"]``."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(f"no hyperparameter named {key!r}; saved: {sorted(self)}") from err

    def __setattr__(self, key, value):
        self[key] = value


_PLAIN = (bool, int, float, str, type(None))


def to_plain(value: Any):
    """Return ``value`` as plain data (numbers, strings, lists, dicts) or raise TypeError.

    Checkpoints load with ``torch.load(weights_only=True)``, so hyperparameters must be plain data.
    """
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, Namespace):
        return to_plain(vars(value))
    raise TypeError(type(value).__name__)


class HyperparametersMixin:
    """Gives ``save_hyperparameters()`` and ``hparams`` to Module and DataModule."""

    def save_hyperparameters(self, *args, ignore=None, frame=None, logger: bool = True) -> None:
        """Record the ``__init__`` arguments of the caller as ``self.hparams``.

        Called with no arguments inside ``__init__`` it records every init argument; with names
        (``save_hyperparameters("lr", "hidden")``) only those; with one dict or Namespace, that.
        ``ignore`` names arguments to leave out (e.g. a backbone module).

        Example::

            class Net(surge.Module):
                def __init__(self, lr=1e-3, hidden=64):
                    super().__init__()
                    self.save_hyperparameters()   # self.hparams.lr == 1e-3
        """
        ignore = {ignore} if isinstance(ignore, str) else set(ignore or ())
        if len(args) == 1 and isinstance(args[0], (dict, Namespace)):
            values = dict(vars(args[0]) if isinstance(args[0], Namespace) else args[0])
        else:
            frame = frame or inspect.currentframe().f_back
            values = _init_args(frame)
            if args:
                missing = [a for a in args if a not in values]
                if missing:
                    raise ValueError(
                        f"save_hyperparameters: {missing} are not arguments of __init__; "
                        f"the arguments are {sorted(values)}"
                    )
                values = {k: values[k] for k in args}
        values = {k: v for k, v in values.items() if k not in ignore}
        self._hparams = AttributeDict(values)
        self._log_hyperparams = logger

    @property
    def hparams(self) -> AttributeDict:
        """The recorded hyperparameters (empty until ``save_hyperparameters`` is called)."""
        if not hasattr(self, "_hparams"):
            object.__setattr__(self, "_hparams", AttributeDict())
        return self._hparams

    def _plain_hparams(self) -> tuple[dict, list[str]]:
        """The hyperparameters that are plain data, and the names of those that are not."""
        plain, skipped = {}, []
        for k, v in self.hparams.items():
            try:
                plain[k] = to_plain(v)
            except TypeError:
                skipped.append(k)
        return plain, skipped


def _init_args(frame) -> dict:
    """The arguments of the ``__init__`` whose frame is ``frame`` (or the nearest such frame)."""
    while frame is not None and frame.f_code.co_name != "__init__":
        frame = frame.f_back
    if frame is None:
        raise RuntimeError("save_hyperparameters() must be called inside __init__ or given a dict")
    info = inspect.getargvalues(frame)
    values = {name: info.locals[name] for name in info.args[1:] if name in info.locals}
    if info.varargs and info.locals.get(info.varargs):
        values[info.varargs] = list(info.locals[info.varargs])
    if info.keywords:
        values.update(info.locals.get(info.keywords, {}))
    return values
