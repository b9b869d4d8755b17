"""Where the file loggers write: a local folder, or a URL that ``fsspec`` understands.

``CSVLogger("s3://bucket/runs")``, ``"gs://..."``, ``"memory://..."`` (fsspec comes with torch; the
protocol's own package, such as ``s3fs``, must be installed). Local paths go through ``os`` directly:
nothing is imported for them.
"""
from __future__ import annotations

import os
from typing import IO


def is_url(path) -> bool:
    """Whether ``path`` names a location by protocol (``"s3://bucket/x"``) rather than a local path."""
    return isinstance(path, str) and "://" in path


def _fs(path: str):
    import fsspec

    return fsspec.core.url_to_fs(path)[0]


def makedirs(path: str) -> None:
    if is_url(path):
        _fs(path).makedirs(path, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def isfile(path: str) -> bool:
    return _fs(path).isfile(path) if is_url(path) else os.path.isfile(path)


def isdir(path: str) -> bool:
    return _fs(path).isdir(path) if is_url(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
    """The names (not paths) of the entries in folder ``path``."""
    if not is_url(path):
        return os.listdir(path)
    return [entry.rstrip("/").rsplit("/", 1)[-1] for entry in _fs(path).ls(path, detail=False)]


def open_file(path: str, mode: str = "r", **kwargs) -> IO:
    """``open(path, mode)``, for a URL through fsspec (text modes take ``newline=`` there too)."""
    if not is_url(path):
        return open(path, mode, **kwargs)
    import fsspec

    return fsspec.open(path, mode, **kwargs).open()


def replace(source: str, target: str) -> None:
    """Move ``source`` over ``target`` (atomic on a local disk; a copy and delete on most object stores)."""
    if is_url(target):
        _fs(target).mv(source, target)
    else:
        os.replace(source, target)


def remove(path: str) -> None:
    """Delete the file ``path`` if it is there."""
    if is_url(path):
        fs = _fs(path)
        if fs.isfile(path):
            fs.rm_file(path)
    elif os.path.lexists(path):
        os.remove(path)
