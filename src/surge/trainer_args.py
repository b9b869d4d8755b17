"""Checking the Trainer's arguments, and mapping the spellings older code still uses.

Also: defaults read from ``PL_TRAINER_*`` / ``SURGE_TRAINER_*`` environment variables, what
``barebones=True`` turns off, and the notes Lightning users expect about ambiguous values
(``limit_train_batches=1`` is one batch, ``1.0`` is all of them).
"""
from __future__ import annotations

import ast
import difflib
import functools
import inspect
import logging
import os
import re
import sys
import warnings
from datetime import timedelta
from typing import Any, Optional

from .data import check_limit
from .utils import MisconfigurationError, rank_zero_only, rank_zero_warn
from .warnings import PossibleUserWarning

_log = logging.getLogger("surge")



def info(message: str) -> None:
    """An informational note on rank 0, through :mod:`logging` (logger ``"surge"``)."""
    if rank_zero_only.rank == 0:
        _log.info(message)


# How long fit runs: each argument's smallest value and whether None (not given) is allowed. The Trainer checks
# its arguments with these, and so does ``trainer.fit_loop`` (Lightning's name) when they are set through it.
RUN_LENGTH = {"max_epochs": (-1, True), "min_epochs": (0, True), "max_steps": (-1, False), "min_steps": (0, True)}


def check_run_length(name: str, value, where: str = "") -> Any:
    """``value`` for the Trainer's ``name`` (one of :data:`RUN_LENGTH`), named ``where + name`` in the error."""
    minimum, allow_none = RUN_LENGTH[name]
    return check_int(where + name, value, minimum, allow_none=allow_none)


def check_int(name: str, value, minimum: int, allow_none: bool = False, allow: tuple = ()) -> Any:
    if value is None and allow_none:
        return value
    if value in allow and not isinstance(value, bool):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = f" or one of {allow}" if allow else ""
        none = " or None" if allow_none else ""
        raise MisconfigurationError(f"{name} must be an int >= {minimum}{extra}{none}, got {value!r}")
    return value


def check_choice(name: str, value, choices) -> Any:
    if value not in choices:
        raise MisconfigurationError(f"{name}={value!r} is not supported; choose one of {', '.join(map(repr, choices))}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise MisconfigurationError(f"{name} must be True or False, got {value!r}")
    return value


# Arguments older tutorials still pass, and what replaces them.
_LEGACY = {
    "gpus": "accelerator='gpu', devices=N",
    "tpu_cores": None,
    "auto_select_gpus": None,
    "resume_from_checkpoint": "trainer.fit(model, ckpt_path=...)",
    "progress_bar_refresh_rate": "callbacks=[TQDMProgressBar(refresh_rate=N)]",
    "weights_summary": "enable_model_summary",
    "checkpoint_callback": "enable_checkpointing",
    "flush_logs_every_n_steps": None,
    "terminate_on_nan": None,
    "auto_lr_find": None,
    "auto_scale_batch_size": None,
    "replace_sampler_ddp": "use_distributed_sampler",
    "track_grad_norm": None,
    "amp_backend": None,
    "amp_level": None,
    "move_metrics_to_cpu": None,
    "multiple_trainloader_mode": None,
}


def translate_legacy(kwargs: dict, known: set[str]) -> dict:
    """Turn legacy arguments into modern ones (with a one-line warning) and reject unknown ones."""
    modern: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key == "gpus":
            if value in (None, 0, "0", [], ""):
                warnings.warn("Trainer(gpus=0) is deprecated: it means accelerator='cpu'", DeprecationWarning, stacklevel=3)
                modern["accelerator"] = "cpu"
            else:
                warnings.warn(f"Trainer(gpus={value!r}) is deprecated: use accelerator='gpu', devices={value!r}",
                              DeprecationWarning, stacklevel=3)
                modern["accelerator"] = "gpu"
                modern["devices"] = value
        elif key == "resume_from_checkpoint":
            warnings.warn("Trainer(resume_from_checkpoint=...) is deprecated: use trainer.fit(model, ckpt_path=...)",
                          DeprecationWarning, stacklevel=3)
            modern["_resume_from"] = value
        elif key == "replace_sampler_ddp":
            warnings.warn("Trainer(replace_sampler_ddp=...) is deprecated: use use_distributed_sampler=...",
                          DeprecationWarning, stacklevel=3)
            modern["use_distributed_sampler"] = value
        elif key == "checkpoint_callback":
            warnings.warn("Trainer(checkpoint_callback=...) is deprecated: use enable_checkpointing=...",
                          DeprecationWarning, stacklevel=3)
            modern["enable_checkpointing"] = bool(value)
        elif key == "progress_bar_refresh_rate":
            warnings.warn("Trainer(progress_bar_refresh_rate=N) is deprecated: use "
                          "callbacks=[TQDMProgressBar(refresh_rate=N)]; 0 becomes enable_progress_bar=False",
                          DeprecationWarning, stacklevel=3)
            if not value:
                modern["enable_progress_bar"] = False
        elif key == "weights_summary":
            warnings.warn("Trainer(weights_summary=...) is deprecated: use enable_model_summary=...",
                          DeprecationWarning, stacklevel=3)
            modern["enable_model_summary"] = value is not None
        elif key in ("auto_lr_find", "auto_scale_batch_size"):
            if value in (False, None):
                warnings.warn(f"Trainer({key}={value!r}) is no longer an argument; it is ignored", DeprecationWarning,
                              stacklevel=3)
                continue
            tool = ("Tuner(trainer).lr_find(model)", "LearningRateFinder") if key == "auto_lr_find" else \
                ("Tuner(trainer).scale_batch_size(model)", "BatchSizeFinder")
            raise MisconfigurationError(
                f"Trainer({key}={value!r}) no longer exists (Lightning 2.0 removed it; it would do nothing): call "
                f"{tool[0]} before trainer.fit(model) (from surge.tuner import Tuner, or "
                f"lightning.pytorch.tuner), or pass callbacks=[{tool[1]}()] to the Trainer")
        elif key in _LEGACY:
            warnings.warn(f"Trainer({key}=...) is no longer supported and is ignored", DeprecationWarning, stacklevel=3)
        else:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; the arguments are: {', '.join(sorted(known))}"
            raise MisconfigurationError(f"Trainer got an unknown argument {key!r}{hint}")
    return modern


# ---------------------------------------------------------------- defaults from the environment
_ENV_PREFIXES = ("PL", "SURGE")  # SURGE_TRAINER_X wins over PL_TRAINER_X; an explicit argument over both


def _env_value(raw: str) -> Any:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"False"`` -> False, ``"None"`` -> None, ``"[0, 1]"`` -> [0, 1];
    anything else stays the string (``"cpu"``)."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw


def env_defaults(init):
    """Decorate ``__init__`` so that ``PL_<CLASS>_<ARG>`` and ``SURGE_<CLASS>_<ARG>`` environment
    variables give defaults to its keyword arguments (``PL_TRAINER_MAX_EPOCHS=3``), as Lightning's
    Trainer reads them. Arguments passed in the call win. An unknown ``SURGE_TRAINER_*`` name warns
    (a typo would otherwise be ignored); unknown ``PL_TRAINER_*`` names are ignored, as in Lightning."""
    names = [p.name for p in inspect.signature(init).parameters.values()
             if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    @functools.wraps(init)
    def with_env_defaults(self, *args, **kwargs):
        cls = type(self).__name__.upper()
        found: dict[str, Any] = {}
        for prefix in _ENV_PREFIXES:
            for name in names:
                raw = os.environ.get(f"{prefix}_{cls}_{name.upper()}")
                if raw:
                    found[name] = (_env_value(raw), f"{prefix}_{cls}_{name.upper()}")
        own = f"SURGE_{cls}_"
        unknown = sorted(k for k in os.environ if k.startswith(own) and k[len(own):].lower() not in names)
        if unknown:
            rank_zero_warn(f"environment variable(s) {', '.join(unknown)} name no {type(self).__name__} argument "
                           f"and are ignored; the arguments are: {', '.join(names)}")
        used = {name: value for name, (value, _) in found.items() if name not in kwargs}
        if used:
            info("surge: Trainer defaults from the environment: "
                 + ", ".join(f"{name}={value!r} ({found[name][1]})" for name, value in used.items()))
        return init(self, *args, **{**used, **kwargs})

    return with_env_defaults


# ---------------------------------------------------------------- barebones
# What barebones=True turns off: the argument, its value when not given outside barebones, its value
# in barebones, and what it costs.
_BAREBONES_OFF = (
    ("enable_checkpointing", True, False, "checkpointing"),
    ("logger", True, False, "logging"),
    ("enable_progress_bar", True, False, "the progress bar"),
    ("log_every_n_steps", 50, 0, "logging"),
    ("enable_model_summary", True, False, "the model summary"),
    ("num_sanity_val_steps", 2, 0, "the sanity check"),
)
# What barebones=True refuses to run with (all off by default anyway).
_BAREBONES_REFUSED = (
    ("fast_dev_run", "a development run is not a speed measurement"),
    ("detect_anomaly", "anomaly detection"),
    ("profiler", "profiling"),
)


def _given(value) -> bool:
    """Whether a switch was turned on: None, False and 0 all mean "not asked for"."""
    return not (value is None or value is False or (isinstance(value, (int, float)) and value == 0))


def resolve_barebones(barebones: bool, args: dict) -> dict:
    """The switches ``barebones`` decides, filled in: their usual defaults outside barebones mode; off
    under it, where asking for one of them is an error naming it."""
    check_bool("barebones", barebones)
    out = dict(args)
    if not barebones:
        for name, default, _, _ in _BAREBONES_OFF:
            if out[name] is None:
                out[name] = default
        return out
    for name, _, off, what in _BAREBONES_OFF:
        if _given(out[name]):
            raise MisconfigurationError(
                f"`Trainer(barebones=True, {name}={out[name]!r})` was passed: barebones mode measures the "
                f"Trainer's own overhead, so {what} is off in it; drop {name} or barebones=True")
        out[name] = off
    for name, what in _BAREBONES_REFUSED:
        if _given(out[name]):
            raise MisconfigurationError(
                f"`Trainer(barebones=True, {name}={out[name]!r})` was passed: barebones mode measures the "
                f"Trainer's own overhead, and {what} would change what it measures; drop {name} or barebones=True")
    info("surge: running in `Trainer(barebones=True)` mode: no checkpointing, logger, progress bar, model "
         "summary, sanity check, per-step logging or self.log; fast_dev_run, detect_anomaly and profiler "
         "are refused. Use it to measure the Trainer's own overhead, not to train.")
    return out


# ---------------------------------------------------------------- how long and how often
def check_fast_dev_run(value):
    """``True``/``1`` -> ``True``; ``False``/``0`` as given; ``N`` -> ``N`` (Lightning's values)."""
    if isinstance(value, bool) or (isinstance(value, int) and value >= 0):
        return True if value == 1 else value
    raise MisconfigurationError(f"fast_dev_run must be True, False or an int >= 0, got {value!r}")


def batch_limit(value, name: str, default: float = 1.0):
    """A ``limit_*_batches`` / ``overfit_batches`` / ``val_check_interval`` value before its range check.

    ``None`` (not given) is ``default``. ``1`` and ``1.0`` mean different things (one batch, all of them):
    given explicitly, a note says which one this is. A whole float above 1 (``10.0``) is that many batches.
    """
    if value is None:
        return default
    if value == 1 and not isinstance(value, bool) and isinstance(value, (int, float)):
        if isinstance(value, int):
            meaning = {"limit_train_batches": "1 batch per epoch is used",
                       "val_check_interval": "validation will run after every training batch"}.get(name, "1 batch is used")
            other = "1.0 for all of them" if name != "val_check_interval" else "1.0 for once per epoch"
        else:
            meaning = {"limit_train_batches": "100% of the batches per epoch are used",
                       "val_check_interval": "validation will run at the end of every training epoch"}.get(
                name, "100% of the batches are used")
            other = "1 for a single batch" if name != "val_check_interval" else "1 for after every batch"
        info(f"`Trainer({name}={value!r})` was configured so {meaning} (an int counts batches, a float is a "
             f"fraction: {other})")
    if isinstance(value, float) and value > 1 and value.is_integer():
        return int(value)
    return value


def batch_limits(train, val, test, predict, overfit_batches, fast_dev_run) -> tuple:
    """``limit_{train,val,test,predict}_batches`` as the loops read them. ``fast_dev_run=N`` makes every
    limit N; ``overfit_batches`` replaces the train and val limits (those get no note about 1 vs 1.0)."""
    out = []
    for name, value in (("limit_train_batches", train), ("limit_val_batches", val), ("limit_test_batches", test),
                        ("limit_predict_batches", predict)):
        replaced = fast_dev_run or (overfit_batches > 0 and name in ("limit_train_batches", "limit_val_batches"))
        out.append(check_limit(1.0 if value is None else value, name) if replaced
                   else check_limit(batch_limit(value, name), name))
    if fast_dev_run:
        out = [int(fast_dev_run)] * 4
    if overfit_batches > 0:
        out[0] = out[1] = overfit_batches
    return tuple(out)


_DURATION = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}):(\d{1,2})$")


def duration_seconds(value, name: str) -> Optional[float]:
    """A time span given as ``"DD:HH:MM:SS"``, a ``timedelta`` or a dict of ``timedelta`` arguments, in
    seconds; ``None`` for anything else (a count or a fraction)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, dict):
        try:
            seconds = timedelta(**value).total_seconds()
        except TypeError as err:
            raise MisconfigurationError(f"{name}={value!r}: a dict must hold timedelta arguments "
                                        f"(days, hours, minutes, seconds...): {err}") from None
    elif isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match is None:
            raise MisconfigurationError(f"{name}={value!r}: a duration string is 'DD:HH:MM:SS', e.g. '00:01:30:00'")
        d, h, m, s = map(int, match.groups())
        seconds = float(((d * 24 + h) * 60 + m) * 60 + s)
    else:
        return None
    if seconds <= 0:
        raise MisconfigurationError(f"{name}={value!r} is a duration of {seconds} s; it must be > 0")
    return seconds


def check_val_check_interval(value, check_val_every_n_epoch):
    """``val_check_interval`` as the fit loop reads it: a float fraction of an epoch, an int batch count, or
    (returned as given) a duration, which :func:`duration_seconds` turns into seconds."""
    if duration_seconds(value, "val_check_interval") is not None:
        return value
    value = check_limit(batch_limit(value, "val_check_interval"), "val_check_interval")
    if value == 0:
        raise MisconfigurationError("val_check_interval must be > 0 (to turn validation off use limit_val_batches=0)")
    if check_val_every_n_epoch is None and isinstance(value, float):
        raise MisconfigurationError(
            "`val_check_interval` should be an integer or a time-based duration (str 'DD:HH:MM:SS', "
            "datetime.timedelta, or dict kwargs for timedelta) when `check_val_every_n_epoch=None`. "
            f"Got val_check_interval={value!r}: with check_val_every_n_epoch=None validation counts training "
            f"batches across epochs, so a fraction of one epoch means nothing; give an int")
    return value


def check_val_check_fits(val_check_interval, num_training_batches, check_val_every_n_epoch, validates: bool) -> None:
    """At fit, once the epoch's length is known (``validates``: there is validation to run): an int
    interval longer than the epoch would never validate; a fraction needs an epoch of known length."""
    if check_val_every_n_epoch is None or not validates or duration_seconds(val_check_interval, "") is not None:
        return
    if isinstance(val_check_interval, int) and isinstance(num_training_batches, int) \
            and val_check_interval > num_training_batches:
        raise MisconfigurationError(
            f"`val_check_interval` ({val_check_interval}) must be less than or equal to the number of the "
            f"training batches ({num_training_batches}): validation would never run. Turn validation off with "
            f"limit_val_batches=0, or count batches across epochs with check_val_every_n_epoch=None")
    if isinstance(val_check_interval, float) and val_check_interval != 1.0 and num_training_batches is None:
        raise MisconfigurationError(
            f"val_check_interval={val_check_interval} is a fraction of an epoch, but the training dataloader "
            f"has no length (an iterable dataset): give val_check_interval as an int number of batches, or 1.0")


def fit_epoch_limits(max_epochs, max_steps: int) -> int:
    """``max_epochs`` as fit uses it: not given, it is 1000 (with a warning) unless ``max_steps`` bounds fit."""
    if max_epochs is not None:
        return max_epochs
    if max_steps != -1:
        return -1
    rank_zero_warn("`max_epochs` was not set. Setting it to 1000 epochs. Pass max_epochs=-1 to train without an "
                   "epoch limit (until max_steps, or until stopped)", PossibleUserWarning)
    return 1000


def check_accumulate_grad_batches(value) -> int:
    if isinstance(value, dict):
        raise MisconfigurationError(
            f"accumulate_grad_batches={value!r}: a schedule {{epoch: factor}} is not accepted (Lightning 2.0 "
            f"removed it too); pass an int >= 1. The fit loop reads trainer.accumulate_grad_batches at every batch, "
            f"so a callback's on_train_epoch_start can change it by epoch")
    return check_int("accumulate_grad_batches", value, 1)


# ---------------------------------------------------------------- loggers and callbacks
def build_loggers(logger, default_root_dir: str) -> list:
    """``logger=`` as a list: True/None the default (TensorBoard if installed, else CSV), False none."""
    from .loggers import CSVLogger, Logger, TensorBoardLogger

    if logger is True or logger is None:
        try:
            import tensorboard  # noqa: F401  (only checks it is installed)

            return [TensorBoardLogger(default_root_dir)]
        except ImportError:
            return [CSVLogger(default_root_dir)]
    if logger is False:
        return []
    items = list(logger) if isinstance(logger, (list, tuple)) else [logger]
    for item in items:
        if not isinstance(item, Logger):
            raise MisconfigurationError(f"logger must be True, False, a surge Logger or a list of them, got {type(item).__name__}")
    return items


def build_callbacks(callbacks, checkpointing: bool, progress_bar: bool, model_summary: bool,
                    default_checkpoint: bool) -> list:
    """The user's callbacks plus the default ones the switches ask for (``default_checkpoint``: add a
    ModelCheckpoint when none is given; fast_dev_run adds none but keeps the user's)."""
    from .callbacks import Callback, ModelCheckpoint, ModelSummary, ProgressBar, TQDMProgressBar

    if callbacks is None:
        callbacks = []
    items = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    for cb in items:
        if not isinstance(cb, Callback):
            raise MisconfigurationError(f"callbacks must be surge Callback instances, got {type(cb).__name__}")
    if default_checkpoint and not any(isinstance(cb, ModelCheckpoint) for cb in items):
        from . import dialect

        items.append(ModelCheckpoint(save_last=dialect.active().default_save_last))  # last.ckpt: surge's names only
    if not checkpointing and any(isinstance(cb, ModelCheckpoint) for cb in items):
        raise MisconfigurationError("Trainer was configured with `enable_checkpointing=False` but found "
                                    "`ModelCheckpoint` in callbacks list.")
    if progress_bar and not any(isinstance(cb, ProgressBar) for cb in items):
        items.append(TQDMProgressBar())
    if not progress_bar:
        items = [cb for cb in items if not isinstance(cb, ProgressBar)]
    if model_summary and not any(isinstance(cb, ModelSummary) for cb in items):
        # With the rich progress bar the summary is rich too, as in Lightning (its module is loaded only if used).
        rich_bar = sys.modules.get("surge.callbacks.rich_progress")
        if rich_bar is not None and any(isinstance(cb, rich_bar.RichProgressBar) for cb in items):
            from .callbacks import RichModelSummary

            items.append(RichModelSummary())
        else:
            items.append(ModelSummary())
    # Checkpointing runs last, so it sees what every other callback did to the state.
    return [cb for cb in items if not isinstance(cb, ModelCheckpoint)] + \
           [cb for cb in items if isinstance(cb, ModelCheckpoint)]
