"""Sharded checkpoint folders (DCP): committing one atomically, asynchronous saves, and reading one
in a single process (the full state, and ``surge consolidate``).

Used by :class:`surge.strategies.fsdp.FSDP`, by any strategy that resumes from a sharded folder, and
by the command line. Reading needs no process group (DCP's ``no_dist``).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from typing import Callable, Optional

import torch

from ..checkpoint import (CheckpointError, CheckpointWriteError, _fsync_dir, _os_error_of,
                          remove_checkpoint_files, save_checkpoint)

META_FILE = "surge_meta.pt"


def commit_folder(tmp: str, path: str) -> None:
    """Swap the finished folder ``tmp`` in for ``path`` (a file or folder, or nothing yet). The old one is
    renamed aside first and deleted last, so a crash at any moment leaves the old checkpoint or the new one
    under ``path`` (a leftover ``.<name>.old`` beside it is the old one), never a mix."""
    old = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".old")
    remove_checkpoint_files(old)
    if os.path.lexists(path):
        os.rename(path, old)
    os.rename(tmp, path)
    _fsync_dir(os.path.dirname(path))
    remove_checkpoint_files(old)


class PendingSave:
    """The one asynchronous sharded save in flight, and what waits for it.

    ``dcp.async_save`` copies the shards to CPU memory before it returns (so training may change the
    weights right away) and writes them in a background thread. When this rank's write is done,
    ``on_done`` runs in that thread (rank 0: commit the folder under its name), then the removals that
    were asked for meanwhile (ModelCheckpoint's stale top-k checkpoints: never deleted before the new one
    is committed). A failed write commits nothing and removes nothing; :meth:`wait` raises its error.
    """

    def __init__(self, future: Future, path: str, on_done: Optional[Callable[[], None]]) -> None:
        self.path = path
        self._done: Future = Future()
        self._lock = threading.Lock()
        self._finished = False
        self._removals: list[str] = []
        self._on_done = on_done
        future.add_done_callback(self._finish)

    def _finish(self, future: Future) -> None:
        error = future.exception()
        try:
            if error is None and self._on_done is not None:
                self._on_done()
        except BaseException as err:  # noqa: BLE001  (handed to wait(), which raises it in the main thread)
            error = err
        with self._lock:  # after this, remove_after() removes at once
            self._finished = True
            removals, self._removals = self._removals, []
        if error is None:
            for path in removals:
                remove_checkpoint_files(path)
            self._done.set_result(None)
        else:
            self._done.set_exception(error)

    def remove_after(self, path: str) -> bool:
        """Delete ``path`` once this save is committed; False if it is already done (delete it yourself)."""
        with self._lock:
            if self._finished:
                return False
            self._removals.append(path)
            return True

    def wait(self, timeout: Optional[float] = None) -> None:
        """Block until the save is written and committed; raise a CheckpointError if it failed."""
        try:
            self._done.result(timeout=timeout)
        except BaseException as err:
            os_error = _os_error_of(err)
            kind = CheckpointWriteError if os_error is not None else CheckpointError
            raise kind(f"the asynchronous save of checkpoint {self.path!r} failed: {os_error or err}. Nothing was "
                       f"committed under that name: the previous checkpoints are intact") from err


def _read_meta(path: str) -> dict:
    meta = os.path.join(path, META_FILE)
    if not os.path.isfile(meta) or not os.path.isfile(os.path.join(path, ".metadata")):
        raise CheckpointError(f"{path!r} is a directory but not a sharded surge checkpoint (no {META_FILE} and .metadata)")
    ckpt = load_checkpoint_meta(meta)
    if "sharded" not in ckpt:
        raise CheckpointError(f"{meta!r} is not the metadata of a sharded surge checkpoint")
    return ckpt


def load_checkpoint_meta(meta_file: str) -> dict:
    try:
        return torch.load(meta_file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (any unreadable file is the same problem for the user)
        raise CheckpointError(f"{meta_file!r} cannot be read: {err}") from err


def _optim_names_to_ids(state: dict) -> dict:
    """An optimizer state keyed by parameter name (DCP's form) in ``optimizer.state_dict()``'s form:
    parameters numbered 0, 1, ... in the order of the param groups."""
    ids, groups = {}, []
    for g in state["param_groups"]:
        group = dict(g)
        group["params"] = [ids.setdefault(name, len(ids)) for name in g["params"]]
        groups.append(group)
    return {"state": {ids[name]: s for name, s in state["state"].items()}, "param_groups": groups}


def _optim_ids_to_names(state: dict, order: list[str]) -> dict:
    """The inverse of :func:`_optim_names_to_ids`, given the parameter names in the optimizer's order."""
    groups = [dict(g, params=[order[i] for i in g["params"]]) for g in state["param_groups"]]
    return {"state": {order[i]: s for i, s in state["state"].items()}, "param_groups": groups}


def read_sharded_checkpoint(path: str) -> dict:
    """A sharded checkpoint directory as one full checkpoint dict, in this process, with no process
    group (DCP's ``no_dist``). The optimizer states come back in ``optimizer.state_dict()`` form, so
    a run without FSDP resumes from it."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    ckpt = _read_meta(path)
    count = ckpt.pop("sharded").get("optimizers")
    # What torch's own format_utils.dcp_to_torch_save does: the empty planner fills ``tensors`` with
    # everything in the checkpoint (dcp.load would fill a copy of it).
    tensors: dict = {}
    _load_state_dict(tensors, storage_reader=FileSystemReader(path), planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    ckpt["state_dict"] = tensors["state_dict"]
    if count is not None:
        ckpt["optimizer_states"] = [_optim_names_to_ids(tensors["optimizer_states"][str(i)]) for i in range(count)]
    return ckpt


def consolidate(ckpt_dir: str, out_file: str, weights_only: bool = False) -> str:
    """Write the sharded checkpoint ``ckpt_dir`` as one ordinary surge checkpoint file ``out_file``.

    The result loads with ``Module.load_from_checkpoint``, with ``Trainer(ckpt_path=...)`` on any
    strategy, or into a plain ``nn.Module``::

        consolidate("checkpoints/last.ckpt", "model.ckpt", weights_only=True)
        net.load_state_dict(torch.load("model.ckpt", weights_only=True)["state_dict"])

    ``weights_only`` drops the optimizer and trainer state (a smaller file, for inference).
    Runs in one process and needs the whole model in CPU memory. Also: ``surge consolidate DIR FILE``.
    """
    ckpt = read_sharded_checkpoint(os.fspath(ckpt_dir))
    if weights_only:
        keep = ("surge_format_version", "surge_version", "torch_version", "epoch", "global_step", "state_dict",
                "hyper_parameters")
        ckpt = {k: v for k, v in ckpt.items() if k in keep}
    save_checkpoint(ckpt, os.fspath(out_file))
    return os.fspath(out_file)


def main(argv=None) -> int:
    """``surge consolidate CKPT_DIR OUT_FILE [--weights-only]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="surge consolidate", description=consolidate.__doc__.split("\n")[0])
    parser.add_argument("ckpt_dir", help="a sharded checkpoint folder (FSDP, state_dict_type='sharded')")
    parser.add_argument("out_file", help="the single checkpoint file to write")
    parser.add_argument("--weights-only", action="store_true", help="keep the weights only (for inference)")
    args = parser.parse_args(argv)
    try:
        consolidate(args.ckpt_dir, args.out_file, weights_only=args.weights_only)
    except CheckpointError as err:
        parser.error(str(err))
    print(f"surge consolidate: wrote {args.out_file}")
    return 0
