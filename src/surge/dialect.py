"""The few default names where surge and Lightning differ: one implementation, two sets of defaults.

- the loggers' default folder name: ``surge_logs`` / ``lightning_logs``;
- where ``seed_everything`` leaves the seed: ``$SURGE_GLOBAL_SEED`` / ``$PL_GLOBAL_SEED``
  (and its ``workers`` flag: ``$SURGE_SEED_WORKERS`` / ``$PL_SEED_WORKERS``);
- whether the Trainer's own ModelCheckpoint (the one added when none is given) also writes ``last.ckpt``:
  yes under surge's names, no under Lightning's (its ``save_last=None``).

surge's names are active until ``surge.lightning`` is imported, which switches the process to
Lightning's: code written for Lightning finds its logs in ``lightning_logs/version_N`` and its seed in
``$PL_GLOBAL_SEED``, as it did. The switch is process-wide (there is one ``CSVLogger`` class, reached under
both names). Defaults only: an explicit ``CSVLogger(save_dir, name="runs")`` is the same in both.

A logger's ``name`` default is rewritten in its signature on a switch (see :func:`default`), so
``inspect.signature``, ``--help`` and a saved ``config.yaml`` show the folder a run really uses.

Example (tests, or a process that runs code of both kinds)::

    from surge import dialect

    with dialect.using(dialect.SURGE):      # surge's names inside, whatever was active before
        surge.Trainer().fit(model)           # logs under surge_logs/

This module imports nothing but the standard library.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Callable, Iterator

__all__ = ["Dialect", "SURGE", "LIGHTNING", "active", "use", "using", "reset", "default"]


@dataclass(frozen=True)
class Dialect:
    """One set of default names."""

    name: str
    log_folder: str         # the loggers' default ``name``: the folder under ``save_dir``
    seed_env: str           # where seed_everything leaves the seed (for worker processes and samplers)
    seed_workers_env: str   # "1" when seed_everything(workers=True) asked for seeded DataLoader workers
    default_save_last: object = None  # save_last of the Trainer's default ModelCheckpoint


SURGE = Dialect("surge", log_folder="surge_logs", seed_env="SURGE_GLOBAL_SEED", seed_workers_env="SURGE_SEED_WORKERS",
                default_save_last=True)
LIGHTNING = Dialect("lightning", log_folder="lightning_logs", seed_env="PL_GLOBAL_SEED",
                    seed_workers_env="PL_SEED_WORKERS")

_active = SURGE
# (function, where its default lives: ("positional", index) or ("keyword", parameter name), Dialect field)
_defaults: list[tuple[Callable, tuple, str]] = []


def active() -> Dialect:
    """The set of names in use now."""
    return _active


def use(dialect: Dialect) -> Dialect:
    """Make ``dialect`` the active one for the whole process; return the one it replaces."""
    global _active
    if not isinstance(dialect, Dialect):
        raise TypeError(f"dialect.use() expects surge.dialect.SURGE or LIGHTNING, got {dialect!r}")
    previous, _active = _active, dialect
    for fn, where, field in _defaults:
        _write_default(fn, where, getattr(dialect, field))
    return previous


@contextlib.contextmanager
def using(dialect: Dialect) -> Iterator[Dialect]:
    """``dialect`` inside the block, the previous one after it (even on error)."""
    previous = use(dialect)
    try:
        yield dialect
    finally:
        use(previous)


def reset() -> None:
    """Back to surge's own names (what a process starts with)."""
    use(SURGE)


def default(parameter: str, field: str) -> Callable[[Callable], Callable]:
    """Decorate a function whose ``parameter`` defaults to surge's value of ``field``: the default follows
    the active dialect from then on (written into ``__defaults__``, so the signature shows it).

    Example::

        @dialect.default("name", "log_folder")
        def __init__(self, save_dir, name="surge_logs"): ...
    """
    if field not in Dialect.__dataclass_fields__ or field == "name":
        raise ValueError(f"dialect.default(field={field!r}): choose one of "
                         f"{[f for f in Dialect.__dataclass_fields__ if f != 'name']}")

    def register(fn: Callable) -> Callable:
        param = inspect.signature(fn).parameters.get(parameter)
        if param is None or param.default != getattr(SURGE, field):
            raise ValueError(f"dialect.default: {fn.__qualname__}({parameter}=...) must default to "
                             f"{getattr(SURGE, field)!r} (surge's {field}), found "
                             f"{'no such parameter' if param is None else repr(param.default)}")
        if param.kind is inspect.Parameter.KEYWORD_ONLY:
            where = ("keyword", parameter)
        else:
            positional = [p for p in inspect.signature(fn).parameters.values()
                          if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is not p.empty]
            where = ("positional", [p.name for p in positional].index(parameter))
        _defaults.append((fn, where, field))
        _write_default(fn, where, getattr(_active, field))  # a module first imported after a switch
        return fn

    return register


def _write_default(fn: Callable, where: tuple, value) -> None:
    kind, key = where
    if kind == "keyword":
        fn.__kwdefaults__ = {**fn.__kwdefaults__, key: value}
    else:
        values = list(fn.__defaults__)
        values[key] = value
        fn.__defaults__ = tuple(values)
