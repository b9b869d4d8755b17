"""Reading a DCP checkpoint folder without trusting it.

``torch.distributed.checkpoint``'s ``FileSystemReader`` unpickles ``.metadata`` with plain ``pickle``,
and its default planners unpickle every non-tensor entry of the shards (param groups, counters) with
``torch.load(weights_only=False)``: a crafted folder runs code as it is opened. It also trusts the
metadata's file names, offsets and sizes. :class:`SafeReader` is the reader surge uses for every DCP
read (``dcp.load`` under FSDP, the single-process read behind ``consolidate``):

- ``.metadata`` is unpickled by an unpickler that knows only the classes DCP metadata is made of,
  then checked (:func:`check_metadata`) before any shard is opened;
- shard entries must stay inside the folder and end within their file; each one's zip container is
  checked like a checkpoint file (CRC-32, no decompression bomb) and loads with ``weights_only=True``;
  non-tensor entries are handed to the planner re-serialized from that safe load.
"""
from __future__ import annotations

import collections
import io
import math
import os
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, StorageMeta, TensorStorageMetadata)
from torch.distributed.checkpoint.planner import LoadItemType
from torch.futures import Future

from ..checkpoint import CheckpointError
from ..checkpoint_checks import torch_load_checked

METADATA_FILE = ".metadata"


def _allowed_globals() -> dict:
    """(module, name) -> object: everything a DCP ``.metadata`` pickle may name, and nothing else."""
    import pathlib

    from torch.distributed.checkpoint import metadata as md

    allowed = {("torch.distributed.checkpoint.metadata", cls.__name__): cls for cls in (
        md.Metadata, md.StorageMeta, md.MetadataIndex, md.TensorStorageMetadata, md.BytesStorageMetadata,
        md.ChunkStorageMetadata, md.TensorProperties, md._MEM_FORMAT_ENCODING)}
    allowed[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = _StorageInfo
    allowed[("torch", "Size")] = torch.Size
    # dtypes, layouts and memory formats are pickled by name; a layout through this lookup function.
    allowed.update({("torch", name): value for name, value in vars(torch).items()
                    if isinstance(value, (torch.dtype, torch.layout, torch.memory_format))})
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    # StorageMeta.checkpoint_id: the path the folder was saved under (a Windows path: readable anywhere).
    allowed.update({("pathlib", name): pathlib.PurePosixPath if name.startswith("Pure") else pathlib.PosixPath
                    for name in ("Path", "PosixPath", "PurePath", "PurePosixPath")})
    allowed.update({("pathlib", name): pathlib.PureWindowsPath for name in ("WindowsPath", "PureWindowsPath")})
    # Containers that older pickle protocols build by calling them. Nothing that allocates from a number
    # alone (bytes(10**12) would be a memory bomb of a few bytes).
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed.update({("builtins", t.__name__): t for t in (set, frozenset)})
    return allowed


class _Refused(pickle.UnpicklingError):
    """The pickle names a class outside DCP's metadata."""


class _MetadataUnpickler(pickle.Unpickler):
    _allowed: dict = {}

    def find_class(self, module: str, name: str) -> Any:
        if not _MetadataUnpickler._allowed:
            _MetadataUnpickler._allowed = _allowed_globals()
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def read_metadata_file(path: str) -> Metadata:
    """Unpickle a DCP ``.metadata`` file allowing only the classes DCP metadata consists of."""
    try:
        with open(path, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except _Refused as err:
        raise CheckpointError(
            f"sharded checkpoint metadata {path!r} holds {err}, which is not part of DCP's metadata: unpickling it "
            f"could run code from the file, so surge refuses the checkpoint") from None
    except OSError as err:
        raise CheckpointError(f"sharded checkpoint metadata {path!r} cannot be read: {err}") from err
    except Exception as err:  # noqa: BLE001  (truncated or garbage bytes fail in many ways inside the unpickler)
        raise CheckpointError(f"sharded checkpoint metadata {path!r} is truncated or corrupt and cannot be read: "
                              f"{type(err).__name__}: {err}") from err
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{path!r} is not DCP metadata: it holds a {type(metadata).__name__}")
    return metadata


def check_metadata(metadata: Metadata, folder: str) -> None:
    """Check that ``metadata`` (of the checkpoint ``folder``) describes entries the folder really holds:
    every file inside the folder, every entry within its file, every tensor covered by chunks whose
    bytes are there (so a few bytes of metadata cannot make a reader allocate a huge tensor)."""
    name = os.path.join(folder, METADATA_FILE)
    storage, sizes = metadata.storage_data, {}
    if not isinstance(metadata.state_dict_metadata, dict) or not isinstance(storage, dict) \
            or not isinstance(metadata.planner_data, dict):
        raise CheckpointError(f"sharded checkpoint metadata {name!r} is malformed: state_dict_metadata, "
                              f"storage_data and planner_data must be dicts")
    for index, info in storage.items():
        if not isinstance(index, MetadataIndex) or not isinstance(info, _StorageInfo):
            raise CheckpointError(f"sharded checkpoint metadata {name!r} is malformed: storage entry {index!r}")
        _check_storage_entry(index, info, folder, name, sizes)
    for fqn, entry in metadata.state_dict_metadata.items():
        where = f"sharded checkpoint metadata {name!r}: entry {fqn!r}"
        path = metadata.planner_data.get(fqn)
        if not isinstance(fqn, str) or not isinstance(path, (tuple, list)) or not path \
                or not all(isinstance(p, (str, int)) and not isinstance(p, bool) for p in path):
            raise CheckpointError(f"{where} is malformed (its name or its place in the state dict)")
        if isinstance(entry, BytesStorageMetadata):
            if MetadataIndex(fqn) not in storage:
                raise CheckpointError(f"{where} has no data in any shard file")
        elif isinstance(entry, TensorStorageMetadata):
            _check_tensor_entry(fqn, entry, storage, where)
        else:
            raise CheckpointError(f"{where} is a {type(entry).__name__}, not a tensor or bytes entry")


def _check_storage_entry(index: MetadataIndex, info: _StorageInfo, folder: str, name: str, sizes: dict) -> None:
    rel, where = info.relative_path, f"sharded checkpoint metadata {name!r}: entry {index.fqn!r}"
    if not isinstance(rel, str) or not rel or os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/") \
            or "\0" in rel:
        raise CheckpointError(f"{where} points to the file {rel!r}, outside the checkpoint folder; surge reads "
                              f"only the folder's own shard files")
    if rel not in sizes:
        real, root = os.path.realpath(os.path.join(folder, rel)), os.path.realpath(folder)
        if not real.startswith(root + os.sep):
            raise CheckpointError(f"{where} points to {rel!r}, which leads outside the checkpoint folder (a link)")
        if not os.path.isfile(real):
            raise CheckpointError(f"{where} is in the shard file {rel!r}, which is missing from {folder!r}")
        sizes[rel] = os.path.getsize(real)
    if info.transform_descriptors:
        raise CheckpointError(f"{where} is stored through transforms {list(info.transform_descriptors)}, which "
                              f"surge never writes and does not read")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (info.offset, info.length)):
        raise CheckpointError(f"{where} has a bad offset or length ({info.offset!r}, {info.length!r})")
    if info.offset + info.length > sizes[rel]:
        raise CheckpointError(
            f"shard file {os.path.join(folder, rel)!r} is truncated: entry {index.fqn!r} needs bytes {info.offset} "
            f"to {info.offset + info.length}, the file has {sizes[rel]}")


def _check_tensor_entry(fqn: str, entry: TensorStorageMetadata, storage: dict, where: str) -> None:
    dtype = getattr(entry.properties, "dtype", None)
    size = entry.size
    if not isinstance(dtype, torch.dtype) or not isinstance(size, torch.Size) or not isinstance(entry.chunks, list) \
            or not all(isinstance(n, int) and n >= 0 for n in size):
        raise CheckpointError(f"{where} is malformed (dtype {dtype!r}, size {size!r})")
    covered = 0
    for chunk in entry.chunks:
        if not isinstance(chunk, ChunkStorageMetadata) or len(chunk.offsets) != len(size) \
                or len(chunk.sizes) != len(size) \
                or any(not (0 <= o and 0 <= n and o + n <= d) for o, n, d in zip(chunk.offsets, chunk.sizes, size)):
            raise CheckpointError(f"{where} has a chunk outside the tensor's {tuple(size)}: {chunk!r}")
        info = storage.get(MetadataIndex(fqn, chunk.offsets))
        if info is None:
            raise CheckpointError(f"{where} has a chunk at {tuple(chunk.offsets)} with no data in any shard file")
        numel = math.prod(chunk.sizes)
        if info.length < numel * dtype.itemsize:
            raise CheckpointError(f"{where}: its chunk at {tuple(chunk.offsets)} declares {numel} elements but has "
                                  f"{info.length} bytes of data")
        covered += numel
    if covered < math.prod(size):
        raise CheckpointError(f"{where}: its chunks cover {covered} of the {math.prod(size)} elements it declares")


class _Window(io.RawIOBase):
    """A read-only, seekable view of ``length`` bytes of ``f`` from ``offset``: one entry of a shard file."""

    def __init__(self, f, offset: int, length: int) -> None:
        super().__init__()
        self._f, self._start, self._len, self._pos = f, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._len}[whence]
        if base + offset < 0:
            raise OSError(22, "seek before the start of the entry")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self._len - self._pos))
        if count == 0:
            return 0
        self._f.seek(self._start + self._pos)
        read = self._f.readinto(memoryview(buffer)[:count])
        self._pos += read
        return read


class SafeReader(FileSystemReader):
    """A ``FileSystemReader`` for untrusted folders: see the module's docstring. The metadata is read and
    checked when the reader is made, so an error is a CheckpointError raised here, before ``dcp.load``."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self._folder = os.fspath(path)
        self._metadata = read_metadata_file(os.path.join(self._folder, METADATA_FILE))
        check_metadata(self._metadata, self._folder)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:  # per-rank metadata: surge never writes it
            raise CheckpointError(f"{self._folder!r} has no rank-local metadata")
        if getattr(self._metadata, "storage_meta", None) is None:
            self._metadata.storage_meta = StorageMeta()
        self._metadata.storage_meta.load_id = self.load_id
        return self._metadata

    def read_data(self, plan, planner) -> Future:
        per_file: dict = {}
        for item in plan.items:
            info = self.storage_data[item.storage_index]
            per_file.setdefault(info.relative_path, []).append((item, info))
        for rel, items in per_file.items():
            shard = os.path.join(self._folder, rel)
            with open(shard, "rb") as f:
                for item, info in items:
                    name = f"shard {shard!r} (entry {item.storage_index.fqn!r} at byte {info.offset})"
                    value = torch_load_checked(_Window(f, info.offset, info.length), name)
                    if item.type == LoadItemType.BYTE_IO:
                        # The planner unpickles bytes entries with weights_only=False: hand it the value
                        # the weights-only load produced, serialized again (plain data only).
                        buffer = io.BytesIO()
                        torch.save(value, buffer)
                        buffer.seek(0)
                        planner.load_bytes(item, buffer)
                    else:
                        self._copy_tensor(value, item, planner, name)
        done: Future = Future()
        done.set_result(None)
        return done

    @staticmethod
    def _copy_tensor(value: Any, item, planner, name: str) -> None:
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{name} should hold a tensor, got {type(value).__name__}")
        try:
            for dim, (start, length) in enumerate(zip(item.storage_offsets, item.lengths)):
                value = value.narrow(dim, start, length)
            target = planner.resolve_tensor(item).detach()
            if target.size() != value.size():
                raise CheckpointError(f"{name} holds a tensor of size {tuple(value.size())}, the checkpoint's "
                                      f"metadata says {tuple(target.size())}")
            target.copy_(value)
        except (RuntimeError, IndexError) as err:
            raise CheckpointError(f"{name} does not match the checkpoint's metadata: {err}") from err
        planner.commit_tensor(item, target)


def unwrap_dcp_error(err: BaseException, folder: str) -> CheckpointError:
    """The CheckpointError to raise for ``err`` from ``dcp.load``: a rank's own CheckpointError if DCP
    gathered one (its ``CheckpointException`` holds each failed rank's), else one naming ``folder``."""
    failures = getattr(err, "failures", None) or {}
    causes = [pair[0] if isinstance(pair, tuple) else pair for _, pair in sorted(failures.items())]
    for cause in causes:
        if isinstance(cause, CheckpointError):
            return cause
    first = causes[0] if causes else err
    return CheckpointError(f"sharded checkpoint {folder!r} cannot be loaded: {type(first).__name__}: {first}")
