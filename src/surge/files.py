"""Paths that may be URLs: a local folder, or a location that ``fsspec`` understands.

``CSVLogger("s3://bucket/runs")``, ``"gs://..."``, ``"memory://..."`` (fsspec comes with torch; the
protocol's own package, such as ``s3fs``, must be installed). Local paths go through ``os`` directly:
nothing is imported for them. :func:`url_scheme` is also what ``ModelCheckpoint`` asks about its ``dirpath``.
"""
from __future__ import annotations

import os
import re
from typing import IO, Optional

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(path) -> Optional[str]:
    """The protocol ``path`` names, lower-cased (``"s3"`` for ``"s3://bucket/x"``, ``"file"`` for
    ``"file:///tmp/x"``), or ``None`` for a plain local path."""
    match = _SCHEME.match(path) if isinstance(path, str) else None
    return match.group(1).lower() if match else None


def is_url(path) -> bool:
    """Whether ``path`` names a location by protocol (``"s3://bucket/x"``, ``"file://..."``): fsspec opens it."""
    return url_scheme(path) is not None


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
