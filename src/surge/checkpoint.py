"""Checkpoint files: atomic writes, safe loads, clear errors.

A checkpoint is a dict of tensors and plain data only, so it loads with
``torch.load(weights_only=True)``: a file from an untrusted source cannot run code.
"""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import zipfile
from typing import Any

import torch

from .utils import SurgeError

FORMAT_VERSION = 1
FORMAT_KEY = "surge_format_version"


class CheckpointError(SurgeError):
    """A checkpoint file that cannot be used: missing, corrupt, foreign, or of another model."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint could not be written (disk full, no permission, ...); also an ``OSError``."""


def save_checkpoint(checkpoint: dict, path: str) -> None:
    """Write ``checkpoint`` to ``path`` atomically.

    The bytes go to a temporary file in the same folder, are flushed and fsynced, and only then
    renamed over ``path``; a crash at any moment leaves either the old file or the new one, never a
    half-written file under the checkpoint's name.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=folder)
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        os_error = _os_error_of(err)
        if os_error is not None:  # disk full, no permission, file too large, read-only file system ...
            raise CheckpointWriteError(
                f"could not write checkpoint {path!r}: {os_error.strerror or os_error} (errno {os_error.errno}). "
                f"Nothing was written under that name: the previous checkpoints are intact. Free space or fix "
                f"the folder's permissions (or choose another with ModelCheckpoint(dirpath=...))"
            ) from err
        raise
    _fsync_dir(folder)


def _os_error_of(err: BaseException):
    """The ``OSError`` behind ``err``: itself, or the one torch's writer wrapped in a RuntimeError."""
    while err is not None:
        if isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
    return None


def _fsync_dir(folder: str) -> None:
    # The rename is durable only once the directory entry itself is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_checkpoint_files(path: str) -> None:
    """Delete a checkpoint: a file, or a sharded checkpoint's folder (nothing if ``path`` is not there)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def load_checkpoint(path, map_location: Any = "cpu") -> dict:
    """Read a surge checkpoint with ``weights_only=True`` and check that it is one."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "GLOBAL" not in text and "global" not in text:
            # Not a forbidden class: bytes that are no pickle at all (a garbage or foreign file).
            raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt and cannot be read "
                                  f"(not a torch.save file)") from err
        detail = next((ln.strip() for ln in text.splitlines() if "Unsupported global" in ln), text.splitlines()[0])
        raise CheckpointError(
            f"checkpoint {path!r} holds objects that only arbitrary unpickling can rebuild, which could run code "
            f"from the file; surge refuses it (it loads with torch.load(weights_only=True) only). If you trust "
            f"the file, load it yourself with torch.load(path, weights_only=False). ({detail})"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, LookupError, TypeError) as err:
        # (the weights-only unpickler fails on arbitrary bytes with IndexError/KeyError/TypeError too)
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt and cannot be read: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path!r} is not a surge checkpoint: expected a dict with a 'state_dict' key, got "
            f"{type(ckpt).__name__}{' with keys ' + str(sorted(ckpt)[:8]) if isinstance(ckpt, dict) else ''}"
        )
    version = ckpt.get(FORMAT_KEY, FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path!r} has format version {version!r}, newer than this surge reads ({FORMAT_VERSION}); "
            f"upgrade surge"
        )
    return ckpt


def load_module_state(module: torch.nn.Module, state_dict: dict, strict: bool = True, path: str = "") -> None:
    """Load ``state_dict`` into ``module``; with ``strict`` every mismatch is listed by name."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs module {tuple(own[k].shape)}"
              for k, v in state_dict.items()
              if k in own and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape)]
    if shapes or (strict and (missing or unexpected)):
        lines = [f"checkpoint {str(path)!r} does not fit {type(module).__name__}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:20])}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): " + "; ".join(shapes[:20]))
        if not shapes:
            lines.append("  pass strict=False to load the matching keys only")
        raise CheckpointError("\n".join(lines))
    module.load_state_dict(state_dict, strict=strict)
