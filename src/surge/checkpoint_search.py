"""What ``ckpt_path="last"`` and ``ckpt_path="best"`` mean: this run's checkpoint, never another run's.

A run keeps its checkpoints in its checkpoint folder: ``ModelCheckpoint(dirpath=...)``, or by default
``<log_dir>/checkpoints``, inside the logger's ``version_N`` folder. A new process of the same run (restarted
after a kill, requeued by a scheduler) gets a *new* version folder from its logger, so "last" must find the
old one, and must not take the folder of another run started from the same place:

1. **An explicit folder is the run's identity** (as in Lightning): ``ModelCheckpoint(dirpath=...)``, a logger
   given a ``version``, the run folder of the config a ``surge`` command was given, or this Trainer's own
   earlier fit. "last" is the newest checkpoint there, and nothing else is looked at.
2. **Otherwise the candidates are the run folders beside this one**: the logger's version folders
   (``<save_dir>/<name>/*``, their ``checkpoints``), or ``default_root_dir`` without a logger. One is another
   run's when
   - a live process holds its run lock (the file ``.surge-run`` in the run folder, locked while that run lives;
     the OS lets go when the process ends, however it ends): resuming it would make two processes continue one run;
   - its run record names another run id (``SURGE_RUN_ID``, else ``SLURM_JOB_ID``, which a requeue keeps);
   - its newest checkpoint was saved with other hyperparameters (the module's and the datamodule's).
   The newest checkpoint of the folders left is "last", and fit takes that folder's lock at once, so two
   runs restarting together cannot both continue one folder.

Runs with equal hyperparameters and no run id cannot be told apart: give each its own ``SURGE_RUN_ID``, a
logger ``version`` or a ``dirpath``. "best" is the best checkpoint of the same run: the callback's own when
this process trained it, else the one the ModelCheckpoint state in the run's newest checkpoint names.
"""
from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import time
from typing import Optional

import torch

RECORD = ".surge-run"
_EXT = ".ckpt"
# The run locks this process holds, by folder. POSIX record locks belong to a process (a forked DataLoader
# worker does not inherit them, so an orphaned worker cannot keep a dead run "alive"), and closing *any*
# descriptor of the file drops them: the file is never opened again while it is held here.
_HELD: dict[str, object] = {}


def run_id() -> Optional[str]:
    """The id that marks this run's folders: ``SURGE_RUN_ID``, else the SLURM job id (kept by a requeue).

    torchrun's ``TORCHELASTIC_RUN_ID`` is not used: it is ``"none"`` unless ``--rdzv-id`` is given, and a new
    random id for each ``--standalone`` launch."""
    return os.environ.get("SURGE_RUN_ID") or os.environ.get("SLURM_JOB_ID") or None


# ---------------------------------------------------------------------- run locks
def claim(folder: str) -> bool:
    """Take the run lock of the run folder ``folder`` for this process (creating the folder) and write the run
    record; False when another live process holds it. Without record locks on this file system (some network
    file systems) the record is written all the same: identity then works by run id and hyperparameters."""
    key = os.path.realpath(folder)
    if key in _HELD:
        return True
    os.makedirs(folder, exist_ok=True)
    handle = open(os.path.join(folder, RECORD), "a+")
    for _ in range(40):  # another process may hold a shared lock for a moment while it reads the record
        if _lock(handle, exclusive=True):
            break
        time.sleep(0.05)
    else:
        handle.close()
        return False
    record = {"run_id": run_id(), "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(record))
    handle.flush()
    if not _HELD:
        atexit.register(_release_all)  # close them before the interpreter's teardown finds them open
    _HELD[key] = handle
    return True


def _release_all() -> None:
    while _HELD:
        _HELD.popitem()[1].close()


def release(folder: str) -> None:
    """Let go of the run lock of ``folder``. The record stays: its run id still tells this run's folder apart."""
    handle = _HELD.pop(os.path.realpath(folder), None)
    if handle is not None:
        handle.close()  # closing drops the lock


def inspect(folder: str) -> tuple[bool, Optional[dict]]:
    """``(held by another live process, its run record or None)`` for ``folder``."""
    if os.path.realpath(folder) in _HELD:
        return False, _read(os.path.join(folder, RECORD))
    path = os.path.join(folder, RECORD)
    try:
        handle = open(path)
    except OSError:
        return False, None  # no record: written by an older surge, or a run that never saved here
    with handle:
        alive = not _lock(handle, exclusive=False)
        return alive, _read(path)


def _lock(handle, exclusive: bool) -> bool:
    """Try to lock ``handle`` without waiting: False when another process holds a conflicting lock. Where the
    file system has no record locks (or the platform no ``fcntl``) nobody can be seen alive: True."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.lockf(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EAGAIN):  # POSIX allows either for "held by another process"
            return False
        return True  # ENOLCK, EINVAL, EOPNOTSUPP...: no record locks here
    return True


def _read(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            record = json.loads(f.read() or "null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# ---------------------------------------------------------------------- checkpoints in a folder
def checkpoints_in(folder: str) -> list[str]:
    """The checkpoints in ``folder`` (files, or sharded folders, named ``*.ckpt``; no temporaries)."""
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(_EXT) and not f.startswith(".")]


def tidy(folder: str, suffix: str = _EXT) -> list[str]:
    """Finish or undo the commits that killed saves left in ``folder`` and remove their stale temporaries
    (rank 0, before anything looks for a checkpoint there); what was done, a line each."""
    from .checkpoint_locks import remove_stale_temporaries
    from .strategies.fsdp_commit import recover_interrupted_commits

    if not os.path.isdir(folder):
        return []
    from .checkpoint import remove_leftover_removals

    notes = [f"{note} in {folder}" for note in recover_interrupted_commits(folder, suffix)]
    notes += [f"finished deleting {os.path.basename(p)} (an old top-k checkpoint; interrupted)" for p in
              remove_leftover_removals(folder)]
    removed = remove_stale_temporaries(folder)
    if removed:
        size = sum(n for _, n in removed) / 2**20
        notes.append(f"removed {len(removed)} temporary file(s) of interrupted saves ({size:.1f} MiB) from {folder}")
    return notes


def newest(paths) -> Optional[str]:
    """The newest of ``paths`` by modification time; on a tie, a ``last*`` file (written after the others)."""
    found = []
    for p in paths:
        try:
            found.append((os.path.getmtime(p), os.path.basename(p).startswith("last"), p))
        except OSError:
            pass  # removed meanwhile (save_top_k)
    return max(found)[2] if found else None


def peek(path: str) -> Optional[dict]:
    """The checkpoint at ``path`` without reading its tensors (memory-mapped; a sharded folder's metadata
    file), or None when it cannot be read. Only what ``torch.save`` writes is opened: a zip of uncompressed
    entries, so nothing here decompresses (the file chosen is loaded with every check afterwards)."""
    import zipfile

    if os.path.isdir(path):
        from .strategies.fsdp_checkpoint import META_FILE

        path = os.path.join(path, META_FILE)
    try:
        with zipfile.ZipFile(path) as archive:
            if any(e.compress_type != zipfile.ZIP_STORED or e.flag_bits & 0x1 for e in archive.infolist()):
                return None
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  (unreadable is unreadable: the candidate is passed over, with the reason)
        return None
    return ckpt if isinstance(ckpt, dict) else None


def hparams_differ(ckpt: dict, module, datamodule) -> Optional[str]:
    """Which saved hyperparameters differ from the module's (and datamodule's), e.g. ``"lr 0.1 here, 0.2
    there"``; None when they are equal."""
    pairs = [(ckpt.get("hyper_parameters") or {}, module._plain_hparams()[0])]
    if datamodule is not None and "datamodule_hyper_parameters" in ckpt:
        pairs.append((ckpt["datamodule_hyper_parameters"] or {}, datamodule._plain_hparams()[0]))
    changes = []
    for saved, own in pairs:
        if not isinstance(saved, dict):
            return f"hyperparameters saved as {type(saved).__name__}, not a dict"
        for key in sorted(set(saved) | set(own), key=str):
            if saved.get(key, "<unset>") != own.get(key, "<unset>"):
                changes.append(f"{key} {own.get(key, '<unset>')!r} here, {saved.get(key, '<unset>')!r} there")
    return "; ".join(changes[:3]) if changes else None


# ---------------------------------------------------------------------- this run's folders
def explicit_folders(trainer) -> list[str]:
    """The checkpoint folders named as this run's (rule 1 above), in order."""
    folders = list(getattr(trainer, "_cli_checkpoint_folders", None) or [])
    logger = trainer.loggers[0] if trainer.loggers else None
    explicit_version = logger is not None and getattr(logger, "_explicit_version", False)
    for cb in trainer.checkpoint_callbacks:
        if cb.dirpath and (not cb._dirpath_from_logger or explicit_version):
            folders.append(cb.dirpath)
    if explicit_version and not trainer.checkpoint_callbacks:
        folders.append(os.path.join(trainer.default_root_dir, "checkpoints"))
    return list(dict.fromkeys(folders))


def sibling_runs(trainer) -> list[tuple[str, str]]:
    """``(run folder, checkpoint folder)`` of every run like this one (rule 2 above): with a logger, each
    version folder beside this run's and its ``checkpoints``; without one, ``default_root_dir`` (where the run
    record lives) and ``default_root_dir/checkpoints``."""
    runs = []
    if trainer.loggers and trainer.loggers[0].log_dir:
        root = os.path.dirname(os.path.normpath(trainer.log_dir))
        leaves = {os.path.basename(os.path.normpath(cb.dirpath)) for cb in trainer.checkpoint_callbacks if cb.dirpath}
        if os.path.isdir(root):
            for entry in sorted(os.listdir(root)):
                runs += [(os.path.join(root, entry), os.path.join(root, entry, leaf)) for leaf in sorted(leaves)]
    runs.append((trainer.default_root_dir, os.path.join(trainer.default_root_dir, "checkpoints")))
    return [r for r in dict.fromkeys(runs) if os.path.isdir(r[1])]


def find_last(trainer, fit: bool) -> tuple[Optional[str], str]:
    """``(path, why)``: this run's newest checkpoint (None: none; ``why`` then says where it looked and what
    it passed over). In fit, a folder found by the search is taken for this process at once (its run lock)."""
    own = [cb.last_model_path for cb in trainer.checkpoint_callbacks
           if cb.last_model_path and os.path.exists(cb.last_model_path)]
    explicit = explicit_folders(trainer)
    if own or explicit:
        found = newest(own + [p for folder in explicit for p in checkpoints_in(folder)])
        if found is not None and fit:
            warn_if_alive(trainer.log_dir)
        return found, "in " + (", ".join(explicit) or "this trainer's checkpoint folder")
    return _search(trainer, fit)


def warn_if_alive(run_folder: str) -> None:
    """Warn (rank 0) when another live process holds ``run_folder``'s run lock: two runs would share it."""
    alive, record = inspect(run_folder)
    if alive:
        from .utils import rank_zero_warn

        who = f" (pid {record.get('pid')} on {record.get('host')})" if record else ""
        rank_zero_warn(f"another live run{who} uses {run_folder}: two runs writing one folder overwrite each "
                       f"other's checkpoints; give each its own ModelCheckpoint(dirpath=...) or logger version")


def _search(trainer, fit: bool) -> tuple[Optional[str], str]:
    runs = sibling_runs(trainer)
    ours, passed = [], []
    for run_folder, folder in runs:
        if not inspect(run_folder)[0]:  # a live run's saves are its own business
            for note in tidy(folder):
                print(f"surge: {note}", flush=True)
        latest = newest(checkpoints_in(folder))
        if latest is None:
            continue
        reason = _not_ours(run_folder, latest, trainer, fit)
        if reason:
            passed.append(f"{_short(folder)} ({reason})")
        elif os.path.exists(latest):
            ours.append((os.path.getmtime(latest), latest, run_folder))
    for _, path, run_folder in sorted(ours, reverse=True):
        if not fit or claim(run_folder):
            return path, ""
        passed.append(f"{_short(os.path.dirname(path))} (taken by another run starting at the same time)")
    where = os.path.dirname(os.path.normpath(trainer.log_dir)) if trainer.loggers else trainer.default_root_dir
    return None, f"under {where!r}" + (f"; passed over: {', '.join(passed)}" if passed else "")


def _not_ours(run_folder: str, latest: str, trainer, fit: bool) -> Optional[str]:
    alive, record = inspect(run_folder)
    if alive and fit:
        return f"in use by a live run, pid {record.get('pid') if record else '?'}"
    if record is not None and record.get("run_id") != run_id():
        return f"run id {record.get('run_id')!r}, this run's is {run_id()!r}"
    ckpt = peek(latest)
    if ckpt is None:
        return f"{os.path.basename(latest)} cannot be read"
    diff = hparams_differ(ckpt, trainer.module, trainer.datamodule)
    return f"other hyperparameters: {diff}" if diff else None


def _short(folder: str) -> str:
    """``version_3/checkpoints`` for ``.../surge_logs/version_3/checkpoints``."""
    return os.sep.join(os.path.normpath(folder).split(os.sep)[-2:])


def find_best(trainer) -> tuple[Optional[str], str]:
    """``(path, why)``: this run's best checkpoint, from the callback (this process trained it) or from the
    ModelCheckpoint state saved in the run's newest checkpoint."""
    cb = trainer.checkpoint_callback
    if cb is not None and cb.best_model_path:
        return cb.best_model_path, ""
    latest, why = find_last(trainer, fit=False)
    if latest is None:
        return None, f"no checkpoint of this run {why}"
    ckpt = peek(latest)
    saved = (ckpt or {}).get("callbacks")
    states = [s for k, s in (saved if isinstance(saved, dict) else {}).items()
              if str(k).startswith("ModelCheckpoint") and isinstance(s, dict) and s.get("best_model_path")]
    if cb is not None:
        states.sort(key=lambda s: s.get("monitor") != cb.monitor)  # the state of a callback like ours first
    for state in states:
        best = state["best_model_path"]
        if os.path.exists(best):
            return best, ""
        moved = os.path.join(os.path.dirname(latest), os.path.basename(best))  # the run's folder was moved
        if os.path.exists(moved):
            return moved, ""
    return None, f"{latest} records no best checkpoint that still exists"
