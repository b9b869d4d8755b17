"""Checking the Trainer's arguments, and mapping the spellings older code still uses."""
from __future__ import annotations

import difflib
import warnings
from typing import Any

from .utils import MisconfigurationError


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
        elif key in _LEGACY:
            warnings.warn(f"Trainer({key}=...) is no longer supported and is ignored", DeprecationWarning, stacklevel=3)
        else:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; the arguments are: {', '.join(sorted(known))}"
            raise MisconfigurationError(f"Trainer got an unknown argument {key!r}{hint}")
    return modern
