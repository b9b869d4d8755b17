"""Writing a sharded checkpoint folder so that a crash, a full disk or a second writer never costs the
last good checkpoint, and putting things right at the next start.

One save of checkpoint ``NAME`` (a folder, written by every rank with DCP: :func:`save_sharded`):

1. rank 0 takes the lock ``.NAME.lock`` (held until the commit: a cleaner or another run's save of the
   same name waits), creates ``.NAME.tmp`` and writes ``surge_meta.pt`` into it; every rank learns
   whether it could (:func:`agree_on_failure`), so no rank writes shards for a save that already failed;
2. every rank writes its shards; DCP's ``.metadata`` comes last, once all ranks have, so a ``.NAME.tmp``
   holding both ``.metadata`` and ``surge_meta.pt`` is complete (:func:`is_complete`);
3. rank 0 commits (:func:`~surge.strategies.fsdp_checkpoint.commit_folder`): ``NAME`` → ``.NAME.old``,
   ``.NAME.tmp`` → ``NAME``, then ``.NAME.old`` is deleted.

A kill at any point leaves a complete checkpoint under ``NAME``, ``.NAME.tmp`` or ``.NAME.old``:
:func:`recover_interrupted_commits` (run by ModelCheckpoint on rank 0 before a run looks for its last
checkpoint) puts the newest complete one back under ``NAME`` and removes the incomplete leftovers. A
failed write (disk full) removes ``.NAME.tmp`` and raises ``CheckpointWriteError`` naming the file and
the OS error on every rank.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
from typing import Optional

from ..checkpoint import (CheckpointError, CheckpointWriteError, _fsync_dir, _os_error_of, remove_checkpoint_files,
                          save_checkpoint)
from ..checkpoint_locks import hold_lock, release_lock
from .fsdp_checkpoint import META_FILE, PendingSave, commit_folder

_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old|lock)")


def aside(path: str, kind: str) -> str:
    """The name beside checkpoint ``path`` of its write in progress ("tmp"), its previous version during a
    commit ("old") or its lock ("lock"): ``.NAME.<kind>``."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{kind}")


def is_complete(folder: str) -> bool:
    """Whether ``folder`` is a whole sharded checkpoint: DCP wrote ``.metadata`` after every rank's shards,
    and rank 0 wrote ``surge_meta.pt`` before them (a folder being deleted loses ``.metadata`` first)."""
    return os.path.isfile(os.path.join(folder, ".metadata")) and os.path.isfile(os.path.join(folder, META_FILE))


class FolderWrite:
    """Rank 0's side of one sharded save of ``path``: the lock, the folder ``.NAME.tmp`` with ``meta``
    (``surge_meta.pt``) in it, and then :meth:`commit` or :meth:`abandon` (either releases the lock)."""

    def __init__(self, path: str, meta: dict) -> None:
        self.path, self.tmp, self._lock_path = path, aside(path, "tmp"), aside(path, "lock")
        self._lock = None
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._lock = hold_lock(self._lock_path)
            remove_checkpoint_files(self.tmp)  # what an earlier failed save of this name left (no one writes it)
            os.makedirs(self.tmp)
            save_checkpoint(meta, os.path.join(self.tmp, META_FILE))
        except BaseException as err:
            self.abandon()
            error = write_error(path, err)
            if error is None:
                raise
            raise error from err

    def commit(self) -> None:
        """Swap the finished folder in under the checkpoint's name."""
        try:
            commit_folder(self.tmp, self.path)
        finally:
            self._release()

    def abandon(self) -> None:
        """The save failed: delete its folder (the previous checkpoint under the name is untouched)."""
        if self._lock is None:
            return  # never got the lock: the folder is not ours to delete
        try:
            remove_checkpoint_files(self.tmp)
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            release_lock(self._lock, self._lock_path)
            self._lock = None


def write_error(path: str, err: BaseException) -> Optional[CheckpointError]:
    """The error to raise for a failed save of ``path``: a CheckpointWriteError naming the file and the OS
    error behind ``err`` (on whichever rank it happened), a CheckpointError for another failure that DCP
    collected from the ranks, or None (re-raise ``err`` itself: a CheckpointError already, an interrupt, a bug)."""
    if isinstance(err, CheckpointError):
        return None
    os_error = _os_error_of(err)
    if os_error is not None:
        where = f" ({os_error.filename})" if os_error.filename and os_error.filename != path else ""
        return CheckpointWriteError(
            f"could not write checkpoint {path!r}{where}: {os_error.strerror or os_error} (errno {os_error.errno}). "
            f"Nothing was committed under that name: the previous checkpoints are intact. Free space or fix the "
            f"folder's permissions (or choose another with ModelCheckpoint(dirpath=...))")
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        rank, failure = next(iter(failures.items()))
        failure = failure[0] if isinstance(failure, tuple) else failure
        return CheckpointError(f"could not write checkpoint {path!r}: rank {rank} failed with "
                               f"{type(failure).__name__}: {failure}. Nothing was committed under that name")
    return None


def agree_on_failure(strategy, failure: Optional[BaseException], what: str) -> None:
    """Every rank raises if any rank failed at this point of a save: its own error, or a CheckpointError
    naming the rank that failed. One all-gather where a barrier was: with a barrier, the ranks would wait
    for a rank that had stopped on an error until the process group's timeout."""
    outcomes = strategy.all_gather_object(None if failure is None else (isinstance(failure, OSError), str(failure)))
    if failure is not None:
        raise failure
    for rank, outcome in enumerate(outcomes):
        if outcome is not None:
            kind = CheckpointWriteError if outcome[0] else CheckpointError
            raise kind(f"rank {rank} could not {what}: {outcome[1]}")


def shard_writer(tmp: str):
    """DCP's FileSystemWriter for ``tmp``, whose failed writes are OSErrors naming the file: torch.save
    into a stream turns the disk's ENOSPC into "RuntimeError: unexpected pos", and DCP sends only that
    (without its ``__context__``) to the other ranks."""
    from torch.distributed.checkpoint import FileSystemWriter

    writer = FileSystemWriter(tmp)
    writer.fs = _naming_file_system()()
    return writer


@functools.lru_cache(maxsize=None)
def _naming_file_system():
    # Built on first use: torch.distributed.checkpoint is imported only by runs that write sharded folders.
    from torch.distributed.checkpoint.filesystem import FileSystem

    class NamingFileSystem(FileSystem):
        @contextlib.contextmanager
        def create_stream(self, path, mode):
            try:
                with super().create_stream(path, mode) as stream:
                    yield stream
            except Exception as err:  # noqa: BLE001  (only re-raised as the OSError behind it, if any)
                os_error = _os_error_of(err)
                if os_error is None or os_error is err and os_error.filename:
                    raise
                raise OSError(os_error.errno, os_error.strerror, os.fspath(path)) from err

    return NamingFileSystem


def save_sharded(strategy, checkpoint: dict, path: str, background_group=None) -> Optional[PendingSave]:
    """Write ``checkpoint`` as the sharded folder ``path``, from every rank of ``strategy`` (the steps
    above). With ``background_group`` (a process group) the shards are written by ``dcp.async_save`` on
    that group and the returned PendingSave commits them when they are on disk; else all is done on return."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    optimizer_states = checkpoint.get("optimizer_states")
    sharded = {"state_dict": checkpoint["state_dict"]}
    if optimizer_states is not None:
        sharded["optimizer_states"] = {str(i): s for i, s in enumerate(optimizer_states)}
    write = failure = None
    if strategy.is_global_zero:
        # Small plain data, written first: the folder counts as complete only once DCP's .metadata is
        # there too, and it is renamed into place only then.
        meta = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        meta["sharded"] = {"world_size": strategy.world_size,
                           "optimizers": None if optimizer_states is None else len(optimizer_states)}
        try:
            write = FolderWrite(path, meta)
        except Exception as err:  # noqa: BLE001  (every rank raises it, below)
            failure = err
    agree_on_failure(strategy, failure, f"begin writing checkpoint {path!r}")
    writer = shard_writer(aside(path, "tmp"))
    try:
        if background_group is not None:
            # DCP's .metadata is written by rank 0 after every rank reported its shards written, so rank 0's
            # future completing means the whole folder is on disk: then commit it (in the writer thread).
            future = dcp.async_save(sharded, storage_writer=writer, process_group=background_group)
            return PendingSave(future, path, write.commit if write else None, write.abandon if write else None)
        dcp.save(sharded, storage_writer=writer)
    except (Exception, CheckpointException) as err:  # (DCP raises every rank's failure on every rank)
        if write is not None:
            write.abandon()
        error = write_error(path, err)
        if error is None:
            raise
        raise error from err
    if write is not None:
        try:
            write.commit()
        except Exception as err:  # noqa: BLE001  (every rank raises it, below)
            failure = write_error(path, err) or err
    agree_on_failure(strategy, failure, f"commit checkpoint {path!r}")
    return None


# ---------------------------------------------------------------------- recovery at the start of a run
def recover_interrupted_commits(folder: str, suffix: str = ".ckpt") -> list:
    """Finish or undo the sharded saves a crash interrupted in ``folder``: for each checkpoint ``NAME``
    (ending in ``suffix``) with a ``.NAME.tmp`` / ``.NAME.old`` / ``.NAME.lock`` beside it, the newest
    complete one of ``.NAME.tmp``, ``NAME`` and ``.NAME.old`` ends up under ``NAME`` and the other
    leftovers are deleted. A checkpoint whose lock a live save holds is left to that save. Rank 0 only
    (the others wait). Returns one line for each checkpoint it changed."""
    names = set()
    for entry in os.listdir(folder):
        match = _LEFTOVER.fullmatch(entry)
        if match is not None and match["name"].endswith(suffix):
            names.add(match["name"])
    notes = []
    for name in sorted(names):
        path = os.path.join(folder, name)
        lock_path = aside(path, "lock")
        lock = hold_lock(lock_path, wait=False)
        if lock is None:
            continue  # a live save of this checkpoint: its own commit finishes the job
        try:
            note = _settle(path)
        finally:
            release_lock(lock, lock_path)
        if note:
            notes.append(note)
    return notes


def _settle(path: str) -> Optional[str]:
    """Put the newest complete version of checkpoint ``path`` under its name; delete the rest."""
    tmp, old, name = aside(path, "tmp"), aside(path, "old"), os.path.basename(path)
    if is_complete(tmp):  # written whole, then the crash came before or during the commit
        commit_folder(tmp, path)
        return f"completed the interrupted commit of {name} (the new version was written whole)"
    removed = [p for p in (tmp, old if os.path.lexists(path) else None) if p is not None and os.path.lexists(p)]
    for leftover in removed:
        remove_checkpoint_files(leftover)
    if not os.path.lexists(path) and os.path.lexists(old):
        if os.path.isdir(old) and not is_complete(old):
            remove_checkpoint_files(old)
            removed.append(old)
        else:  # the crash came between the two renames of a commit whose new version is gone
            os.rename(old, path)
            _fsync_dir(os.path.dirname(path))
            return f"restored {name} from its previous version {os.path.basename(old)} (a newer save was interrupted)"
    if removed:
        return f"removed what an interrupted save of {name} left: {', '.join(os.path.basename(p) for p in removed)}"
    return None
