"""Checks that a checkpoint is what it claims to be, before and after it is unpickled.

Before: the zip container that ``torch.save`` writes. ``torch.load`` checks neither the CRC-32 of the
entries (a flipped bit in a tensor loads as a wrong weight) nor how far a compressed entry expands (a
2 MB file can ask for gigabytes), so :func:`check_zip` reads every entry once, streaming, and refuses
both. After: :func:`check_fields` checks the type of every field the Trainer and ``load_from_checkpoint``
read, so that a damaged or crafted file fails here, naming the file and the field, and not later inside
torch or the fit loop.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any, BinaryIO, Union

import torch

from .checkpoint import CheckpointError

# torch.save writes every entry uncompressed, so a genuine checkpoint declares as many bytes as it holds.
# A copy recompressed by some tool is still welcome up to this ratio; a decompression bomb is far beyond it
# (deflate reaches about 1000:1 on zeros).
MAX_EXPANSION = 8
_SLACK = 1 << 20  # small files: a few entries' worth of headers and padding
_CHUNK = 1 << 20


def check_zip(source: Union[str, BinaryIO], name: str) -> None:
    """Refuse a checkpoint container that is not an intact, plain ``torch.save`` zip.

    ``source`` is a path or a seekable binary file (a window onto one entry of a DCP shard file);
    ``name`` is how errors call it. Checked: it is a zip; no entry is encrypted or compressed with
    anything but deflate; the entries together declare at most ``MAX_EXPANSION`` times the size of
    the container; and every entry's bytes match its CRC-32 (read in 1 MiB pieces: memory stays flat).
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return check_zip(f, name)
    source.seek(0, os.SEEK_END)
    size = source.tell()
    source.seek(0)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise CheckpointError(f"checkpoint {name} is truncated or corrupt and cannot be read "
                              f"(not a torch.save zip file: {err})") from err
    with archive:
        entries = archive.infolist()
        _check_sizes(entries, size, name)
        for entry in entries:
            try:
                with archive.open(entry) as data:
                    while data.read(_CHUNK):
                        pass
            except zipfile.BadZipFile as err:
                raise CheckpointError(
                    f"checkpoint {name} is corrupt: its entry {entry.filename!r} does not match the CRC-32 it was "
                    f"written with ({err}); the bytes changed after the save (a disk or copy error, or tampering)"
                ) from err
            except (OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as err:
                raise CheckpointError(f"checkpoint {name} is truncated or corrupt and cannot be read: its entry "
                                      f"{entry.filename!r} cannot be read ({err})") from err


def _check_sizes(entries: list, size: int, name: str) -> None:
    declared = 0
    for entry in entries:
        if entry.flag_bits & 0x1:
            raise CheckpointError(f"checkpoint {name}: its entry {entry.filename!r} is encrypted; torch.save never "
                                  f"writes that, so it is not a checkpoint surge can read")
        if entry.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(f"checkpoint {name}: its entry {entry.filename!r} uses zip compression method "
                                  f"{entry.compress_type}, which torch cannot read")
        if entry.compress_type == zipfile.ZIP_STORED and entry.file_size != entry.compress_size:
            raise CheckpointError(f"checkpoint {name} is corrupt: its uncompressed entry {entry.filename!r} declares "
                                  f"{entry.file_size} bytes but holds {entry.compress_size}")
        declared += entry.file_size
    if declared > MAX_EXPANSION * size + _SLACK:
        biggest = max(entries, key=lambda e: e.file_size)
        raise CheckpointError(
            f"checkpoint {name} would expand to {declared} bytes from a {size}-byte file (its entry "
            f"{biggest.filename!r}: {biggest.compress_size} bytes compressed to {biggest.file_size}); torch.save never "
            f"compresses, and surge refuses more than {MAX_EXPANSION}x, which only a decompression bomb needs")


def torch_load_checked(source: Union[str, BinaryIO], name: str, map_location: Any = "cpu") -> Any:
    """``torch.load(source, weights_only=True)`` after :func:`check_zip`; every failure a CheckpointError."""
    check_zip(source, name)
    if not isinstance(source, (str, os.PathLike)):
        source.seek(0)
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "GLOBAL" not in text and "global" not in text:
            # Not a forbidden class: bytes that are no pickle at all (a garbage or foreign file).
            raise CheckpointError(f"checkpoint {name} is truncated or corrupt and cannot be read "
                                  f"(not a torch.save file)") from err
        detail = next((ln.strip() for ln in text.splitlines() if "Unsupported global" in ln), text.splitlines()[0])
        raise CheckpointError(
            f"checkpoint {name} holds objects that only arbitrary unpickling can rebuild, which could run code "
            f"from the file; surge refuses it (it loads with torch.load(weights_only=True) only). If you trust "
            f"the file, load it yourself with torch.load(path, weights_only=False). ({detail})"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, LookupError, TypeError) as err:
        # (the weights-only unpickler fails on arbitrary bytes with IndexError/KeyError/TypeError too)
        raise CheckpointError(f"checkpoint {name} is truncated or corrupt and cannot be read: {err}") from err


# ---------------------------------------------------------------------------------------------- fields
# What each field must be, as the code that reads it back needs it (trainer_checkpoint._load_for_stage,
# TrainerState.load_state_dict, the fit loop's data position, Module.load_from_checkpoint). Fields a
# user's on_save_checkpoint added are theirs: not checked.
_COUNTERS = ("epoch", "global_step", "batch_idx", "batches_seen")


class _Bad(Exception):
    """A field that is not what it must be: (where in the checkpoint, what it must be, what it is)."""


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _need(ok: bool, field: str, expected: str, value: Any) -> None:
    if not ok:
        raise _Bad(field, expected, value)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_dict(value: Any, field: str, optional: bool = False) -> None:
    _need(isinstance(value, dict) or (optional and value is None), field,
          "a dict" + (" or None" if optional else ""), value)


def _check_state_dict(sd: Any) -> None:
    _check_dict(sd, "state_dict")
    for key, value in sd.items():
        _need(isinstance(key, str), "state_dict", "keyed by parameter name (str)", key)
        # A module's get_extra_state() may return any plain object; everything else is a tensor.
        _need(isinstance(value, torch.Tensor) or key.endswith("_extra_state"), f"state_dict[{key!r}]",
              "a tensor", value)


def _check_optimizer_state(state: Any, field: str) -> None:
    _check_dict(state, field)
    if "pipeline_stages" in state:  # the pipeline's form: one optimizer state per stage
        stages = state["pipeline_stages"]
        _need(isinstance(stages, list), f"{field}['pipeline_stages']", "a list", stages)
        for i, stage in enumerate(stages):
            _check_optimizer_state(stage, f"{field}['pipeline_stages'][{i}]")
        return
    _need("param_groups" in state and "state" in state, field, "an optimizer.state_dict() (keys 'state' and "
          "'param_groups')", state)
    _check_dict(state["state"], f"{field}['state']")
    for key, value in state["state"].items():
        _check_dict(value, f"{field}['state'][{key!r}]")
    groups = state["param_groups"]
    _need(isinstance(groups, list), f"{field}['param_groups']", "a list", groups)
    for i, group in enumerate(groups):
        _check_dict(group, f"{field}['param_groups'][{i}]")
        _need(isinstance(group.get("params"), list), f"{field}['param_groups'][{i}]['params']", "a list",
              group.get("params"))


def _check_data_position(pos: Any) -> None:
    _check_dict(pos, "data_position")
    _need(_is_count(pos.get("batch_idx")), "data_position['batch_idx']", "a count", pos.get("batch_idx"))
    size = pos.get("batch_size")
    _need(size is None or _is_count(size), "data_position['batch_size']", "a count or None", size)
    for key in ("loader_state", "sampler_state"):
        _need(key in pos, "data_position", f"a dict with the key {key!r}", pos)
        _check_dict(pos[key], f"data_position[{key!r}]", optional=True)


def _check_trainer_state(state: Any) -> None:
    _check_dict(state, "trainer_state")
    for key in _COUNTERS:
        if key in state:
            _need(_is_count(state[key]), f"trainer_state[{key!r}]", "a count (an int >= 0)", state[key])
    if "stage" in state:
        _need(state["stage"] is None or isinstance(state["stage"], str), "trainer_state['stage']", "a str or None",
              state["stage"])
    if "should_stop" in state:
        _need(isinstance(state["should_stop"], bool), "trainer_state['should_stop']", "a bool", state["should_stop"])


def _check_list_of_dicts(ckpt: dict, field: str) -> None:
    value = ckpt[field]
    _need(isinstance(value, list), field, "a list", value)
    for i, item in enumerate(value):
        _check_dict(item, f"{field}[{i}]")


def _check_all(ckpt: dict, meta_only: bool) -> None:
    if not meta_only:
        _check_state_dict(ckpt.get("state_dict"))
    for key in ("epoch", "global_step"):
        if key in ckpt:
            _need(_is_count(ckpt[key]), key, "a count (an int >= 0)", ckpt[key])
    for key in ("hyper_parameters", "datamodule_hyper_parameters"):
        if key in ckpt:
            _check_dict(ckpt[key], key, optional=True)
            for name in ckpt[key] or ():
                _need(isinstance(name, str), key, "keyed by argument name (str)", name)
    if "trainer_state" in ckpt:
        _check_trainer_state(ckpt["trainer_state"])
    if "optimizer_states" in ckpt and not meta_only:
        states = ckpt["optimizer_states"]
        _need(isinstance(states, list), "optimizer_states", "a list", states)
        for i, state in enumerate(states):
            _check_optimizer_state(state, f"optimizer_states[{i}]")
    for key in ("lr_schedulers", "loggers"):
        if key in ckpt:
            _check_list_of_dicts(ckpt, key)
    for key in ("precision", "datamodule", "epoch_schedulers_pending"):
        if key in ckpt:
            _check_dict(ckpt[key], key)
    if "callbacks" in ckpt:
        _check_dict(ckpt["callbacks"], "callbacks")
        for key, value in ckpt["callbacks"].items():
            _check_dict(value, f"callbacks[{key!r}]")
    if "rng" in ckpt:
        _need(isinstance(ckpt["rng"], (dict, list)), "rng", "a dict or a list", ckpt["rng"])
    if "data_position" in ckpt:
        _check_data_position(ckpt["data_position"])


def check_fields(ckpt: dict, name: str, meta_only: bool = False) -> None:
    """Raise a CheckpointError naming ``name`` and the first field of ``ckpt`` that is not what surge reads
    back (``state_dict``, ``optimizer_states``, ``trainer_state``, ``data_position``, ...).

    ``meta_only``: ``ckpt`` is a sharded checkpoint's ``surge_meta.pt``, whose weights and optimizer
    states are in the shards."""
    try:
        _check_all(ckpt, meta_only)
    except _Bad as bad:
        field, expected, value = bad.args
        raise CheckpointError(f"checkpoint {name} is malformed: {field} must be {expected}, got {_describe(value)}") \
            from None
