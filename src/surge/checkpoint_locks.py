"""Who is writing a checkpoint: locked temporaries and lock files, so that what a killed save left
behind can be told from what a live one is writing (and removed or recovered at the next start).

A writer holds an exclusive ``flock`` on its temporary file (or on a sharded save's ``.NAME.lock``) for
as long as it writes; the kernel drops the lock when the process dies, however it dies. A file whose
lock can be taken therefore has no live writer. Names carry the writer's host and pid too, for file
systems without flock.
"""
from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
from typing import Optional

try:
    import fcntl
except ImportError:  # (Windows) no flock: a temporary's writer is then judged by its host and pid only
    fcntl = None

_TEMPORARY = re.compile(r"\.tmp-(?P<host>.+)-(?P<pid>\d+)-[^-]+\.ckpt")


def _host() -> str:
    return re.sub(r"[^\w.-]", "_", socket.gethostname()) or "host"


def _new_temporary(folder: str) -> tuple:
    """A new temporary file in ``folder``, locked: ``(fd, path)``."""
    while True:
        fd, path = tempfile.mkstemp(prefix=f".tmp-{_host()}-{os.getpid()}-", suffix=".ckpt", dir=folder)
        if _take_lock(fd, path, wait=True) != "gone":
            return fd, path
        os.close(fd)  # a cleaner removed it before we held the lock: take another


def _take_lock(fd: int, path: str, wait: bool) -> str:
    """Lock the open file ``fd`` (flock, exclusive) and check that ``path`` still names it. Returns "held";
    "busy" (another process holds it; only without ``wait``); "gone" (``path`` was removed or replaced
    meanwhile: whoever held the lock did it); or "unsupported" (this file system has no flock)."""
    if fcntl is None:
        return "unsupported"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return "busy"
    except OSError as err:
        if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return "unsupported"
        raise
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        same = False
    return "held" if same else "gone"


def hold_lock(path: str, wait: bool = True) -> Optional[int]:
    """Create (or open) the lock file ``path`` and lock it: its file descriptor, for
    :func:`release_lock`; None when another process holds it and ``wait`` is False."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        state = _take_lock(fd, path, wait)
        if state in ("held", "unsupported"):
            return fd
        os.close(fd)
        if state == "busy":
            return None


def release_lock(fd: int, path: str) -> None:
    """Delete the lock file ``path``, then unlock it: a process waiting for the lock then finds it
    removed (:func:`_take_lock` says "gone") and takes a fresh one."""
    try:
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)


def _writer_alive(host: str, pid: int) -> bool:
    """Whether the process that named a temporary may still run (True when this machine cannot tell)."""
    if host != _host() or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def remove_stale_temporaries(folder: str) -> list:
    """Delete the temporary files (``.tmp-<host>-<pid>-<random>.ckpt``) that killed saves left in
    ``folder``; returns ``(path, bytes)`` of each. Only those whose writer is provably gone: nobody holds
    the temporary's lock (or, on a file system without flock, its process no longer runs on this machine).
    A live writer's temporary (another run in the folder, a save in flight) is left alone, and so are
    temporaries without host and pid in their name (written by an older surge: nothing proves them dead)."""
    removed = []
    for name in sorted(os.listdir(folder)):
        match = _TEMPORARY.fullmatch(name)
        if match is None:
            continue
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:  # finished or removed meanwhile, or a folder: not a temporary of save_checkpoint
            continue
        try:
            state = _take_lock(fd, path, wait=False)
            if state == "held" or (state == "unsupported" and not _writer_alive(match["host"], int(match["pid"]))):
                size = os.fstat(fd).st_size
                os.unlink(path)
                removed.append((path, size))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed
