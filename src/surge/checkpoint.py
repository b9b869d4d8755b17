"""Checkpoint files: atomic writes, safe loads, clear errors.

A checkpoint is a dict of tensors and plain data only, so it loads with
``torch.load(weights_only=True)``: a file from an untrusted source cannot run code.
"""
from __future__ import annotations

import os
import shutil
from typing import Any

import torch

from .checkpoint_locks import _new_temporary
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
    half-written file under the checkpoint's name. The temporary (``.tmp-<host>-<pid>-<random>.ckpt``)
    is locked while it is written, so that :func:`surge.checkpoint_locks.remove_stale_temporaries` can
    tell what a killed save left from what a live one is writing.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = _new_temporary(folder)
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
            # Renamed while the lock is held: a cleaner never takes a finished temporary for a dead writer's.
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
    """The ``OSError`` behind ``err``: itself, the one torch's writer wrapped in a RuntimeError (its
    ``__context__``), or one of the ranks' errors that DCP collected in a ``CheckpointException``."""
    seen, todo = set(), [err]
    while todo:
        err = todo.pop(0)
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError):
            return err
        todo += [err.__cause__, err.__context__]
        failures = getattr(err, "failures", None)  # DCP: {rank: (exception, traceback)}
        if isinstance(failures, dict):
            todo += [f[0] if isinstance(f, tuple) and f else f for f in failures.values()]
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


REMOVING = ".removing"  # a sharded checkpoint folder being deleted: ``.NAME.removing``


def remove_checkpoint_files(path: str) -> None:
    """Delete a checkpoint: a file, or a sharded checkpoint's folder (nothing if ``path`` is not there).
    A folder is first renamed to the hidden ``.NAME.removing`` (one atomic step), so a crash while its
    files go never leaves a half-deleted checkpoint under a checkpoint's name, where ``ckpt_path="last"``
    would find it (deleting files makes the folder the newest); :func:`remove_leftover_removals` clears it."""
    if os.path.isdir(path) and not os.path.islink(path):
        head, name = os.path.split(path)
        doomed = os.path.join(head, f".{name}{REMOVING}")
        try:
            os.replace(path, doomed)
        except OSError:
            doomed = path  # e.g. a leftover .removing folder in the way: delete in place, metadata first
            try:
                os.unlink(os.path.join(path, ".metadata"))
            except OSError:
                pass
        shutil.rmtree(doomed, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def remove_leftover_removals(folder: str) -> list[str]:
    """Finish the deletions of sharded checkpoints that a crash interrupted in ``folder``; their paths."""
    done = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if name.startswith(".") and name.endswith(REMOVING) and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            done.append(path)
    return done


def load_checkpoint(path, map_location: Any = "cpu") -> dict:
    """Read a surge checkpoint without trusting it, and check that it is one.

    A file: its zip container is checked first (every entry's CRC-32, no decompression bomb:
    :mod:`surge.checkpoint_checks`), then it loads with ``torch.load(weights_only=True)``, then each field
    the Trainer reads back is checked. A folder is a sharded checkpoint, read whole into this process
    (:func:`surge.strategies.fsdp_checkpoint.read_sharded_checkpoint`, on the CPU). Anything wrong is a
    CheckpointError naming the file and what is wrong.
    """
    from .checkpoint_checks import check_fields, torch_load_checked

    path = os.fspath(path)
    if os.path.isdir(path):
        from .strategies.fsdp_checkpoint import read_sharded_checkpoint

        return read_sharded_checkpoint(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    ckpt = torch_load_checked(path, repr(path), map_location)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path!r} is not a surge checkpoint: expected a dict with a 'state_dict' key, got "
            f"{type(ckpt).__name__}{' with keys ' + str(sorted(ckpt)[:8]) if isinstance(ckpt, dict) else ''}"
        )
    _check_format_version(ckpt, path)
    check_fields(ckpt, repr(path))
    return ckpt


def _check_format_version(ckpt: dict, path: str) -> None:
    version = ckpt.get(FORMAT_KEY, FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path!r} has format version {version!r}, newer than this surge reads ({FORMAT_VERSION}); "
            f"upgrade surge"
        )


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
