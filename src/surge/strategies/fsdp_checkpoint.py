"""Sharded checkpoint folders (DCP): committing one atomically, asynchronous saves, and reading one
in a single process (the full state, and ``surge consolidate``).

Used by :class:`surge.strategies.fsdp.FSDP`, by any strategy that resumes from a sharded folder, and
by the command line. Reading needs no process group (DCP's ``no_dist``).
"""
from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import Future
from typing import Callable, Optional

from ..checkpoint import (CheckpointError, CheckpointWriteError, _check_format_version, _fsync_dir, _os_error_of,
                          remove_checkpoint_files, save_checkpoint)
from ..checkpoint_checks import check_fields, torch_load_checked

META_FILE = "surge_meta.pt"


def commit_folder(tmp: str, path: str) -> None:
    """Swap the finished folder ``tmp`` in for ``path`` (a file or folder, or nothing yet). The old one is
    renamed aside to ``.<name>.old`` first and deleted last, so a crash at any moment leaves a complete
    checkpoint under ``path``, ``tmp`` or ``.<name>.old``, never a mix; the next start puts the newest back
    under ``path`` (:func:`surge.strategies.fsdp_commit.recover_interrupted_commits`)."""
    old = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".old")
    if os.path.lexists(path):
        remove_checkpoint_files(old)  # what an earlier commit left: ``path`` is the good one
        os.rename(path, old)
    # (Without ``path``, an earlier commit stopped between its renames: ``old`` is the last good checkpoint,
    # kept until ``tmp`` is in place.)
    try:
        os.rename(tmp, path)
    except OSError:
        if not os.path.lexists(path) and os.path.lexists(old):
            os.rename(old, path)  # the new one cannot go in: the old one goes back
        raise
    _fsync_dir(os.path.dirname(path))
    remove_checkpoint_files(old)


class PendingSave:
    """The one asynchronous sharded save in flight, and what waits for it.

    ``dcp.async_save`` copies the shards to CPU memory before it returns (so training may change the
    weights right away) and writes them in a background thread. When this rank's write is done,
    ``on_done`` runs in that thread (rank 0: commit the folder under its name), then the removals that
    were asked for meanwhile (ModelCheckpoint's stale top-k checkpoints: never deleted before the new one
    is committed). A failed write commits nothing and removes nothing but what ``on_failure`` removes
    (rank 0: the partial folder); :meth:`wait` raises its error.
    """

    def __init__(self, future: Future, path: str, on_done: Optional[Callable[[], None]],
                 on_failure: Optional[Callable[[], None]] = None) -> None:
        self.path = path
        self._done: Future = Future()
        self._lock = threading.Lock()
        self._finished = False
        self._removals: list[str] = []
        self._on_done = on_done
        self._on_failure = on_failure
        future.add_done_callback(self._finish)

    def _finish(self, future: Future) -> None:
        error = future.exception()
        try:
            if error is None and self._on_done is not None:
                self._on_done()
        except BaseException as err:  # noqa: BLE001  (handed to wait(), which raises it in the main thread)
            error = err
        if error is not None and self._on_failure is not None:
            try:
                self._on_failure()
            except Exception:  # noqa: BLE001  (the write's own error is the one to report)
                pass
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
            if not self._done.done():  # (a TimeoutError is an OSError: say what it is)
                raise CheckpointError(f"the asynchronous save of checkpoint {self.path!r} did not finish within "
                                      f"{timeout} s") from err
            os_error = _os_error_of(err)
            kind = CheckpointWriteError if os_error is not None else CheckpointError
            raise kind(f"the asynchronous save of checkpoint {self.path!r} failed: {os_error or err}. Nothing was "
                       f"committed under that name: the previous checkpoints are intact") from err


def _read_meta(path: str) -> dict:
    """The checked contents of the folder ``path``'s ``surge_meta.pt`` (all but the weights and optimizer
    states, which are in the shards)."""
    meta = os.path.join(path, META_FILE)
    if not os.path.isfile(meta) or not os.path.isfile(os.path.join(path, ".metadata")):
        raise CheckpointError(f"{path!r} is a directory but not a sharded surge checkpoint (no {META_FILE} and .metadata)")
    ckpt = load_checkpoint_meta(meta)
    sharded = ckpt.get("sharded") if isinstance(ckpt, dict) else None
    if not isinstance(sharded, dict):
        raise CheckpointError(f"{meta!r} is not the metadata of a sharded surge checkpoint")
    count = sharded.get("optimizers")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        raise CheckpointError(f"checkpoint {meta!r} is malformed: sharded['optimizers'] must be a count or None, "
                              f"got {count!r}")
    _check_format_version(ckpt, meta)
    check_fields(ckpt, repr(meta), meta_only=True)
    return ckpt


def load_checkpoint_meta(meta_file: str) -> dict:
    """Read a ``surge_meta.pt`` like a checkpoint file: zip checked (CRC, no bomb), ``weights_only=True``."""
    return torch_load_checked(meta_file, repr(meta_file))


def _optim_names_to_ids(state: dict) -> dict:
    """An optimizer state keyed by parameter name (DCP's form) in ``optimizer.state_dict()``'s form:
    parameters numbered 0, 1, ... in the order of the param groups. An optimizer without state (plain
    SGD) has no ``state`` entry in a DCP checkpoint (DCP keeps no empty dicts): an empty one."""
    ids, groups = {}, []
    for g in state["param_groups"]:
        group = dict(g)
        group["params"] = [ids.setdefault(name, len(ids)) for name in g["params"]]
        groups.append(group)
    per_param = state.get("state", {})
    unknown = sorted(str(name) for name in per_param if name not in ids)
    if unknown:
        raise CheckpointError(f"the optimizer state has entries for parameters that are in none of its param groups: "
                              f"{unknown[:5]}")
    return {"state": {ids[name]: s for name, s in per_param.items()}, "param_groups": groups}


def _optim_ids_to_names(state: dict, order: list[str]) -> dict:
    """The inverse of :func:`_optim_names_to_ids`, given the parameter names in the optimizer's order."""
    numbers = [i for g in state["param_groups"] for i in g["params"]] + list(state.get("state", {}))
    bad = [i for i in numbers if not isinstance(i, int) or not 0 <= i < len(order)]
    if bad:
        raise CheckpointError(f"the checkpoint's optimizer state names parameters {bad[:5]}, but the optimizer has "
                              f"{len(order)} parameters (numbered 0 to {len(order) - 1})")
    groups = [dict(g, params=[order[i] for i in g["params"]]) for g in state["param_groups"]]
    return {"state": {order[i]: s for i, s in state.get("state", {}).items()}, "param_groups": groups}


def read_sharded_checkpoint(path: str) -> dict:
    """A sharded checkpoint directory as one full checkpoint dict, in this process, with no process
    group (DCP's ``no_dist``). The optimizer states come back in ``optimizer.state_dict()`` form, so
    a run without FSDP resumes from it. Nothing in the folder is trusted (:mod:`.dcp_safety`): a
    crafted or damaged one is a CheckpointError naming the file and what is wrong."""
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    from .dcp_safety import SafeReader, unwrap_dcp_error

    path = os.fspath(path)
    ckpt = _read_meta(path)
    count = ckpt.pop("sharded").get("optimizers")
    reader = SafeReader(path)
    # What torch's own format_utils.dcp_to_torch_save does: the empty planner fills ``tensors`` with
    # everything in the checkpoint (dcp.load would fill a copy of it).
    tensors: dict = {}
    try:
        _load_state_dict(tensors, storage_reader=reader, planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as err:  # noqa: BLE001  (DCP's planner on inconsistent metadata)
        raise unwrap_dcp_error(err, path) from err
    ckpt["state_dict"] = tensors.get("state_dict", {})
    if count is not None:
        saved = tensors.get("optimizer_states", {})
        states = []
        for i in range(count):
            state = saved.get(str(i)) if isinstance(saved, dict) else None
            if not isinstance(state, dict) or not isinstance(state.get("param_groups"), list):
                raise CheckpointError(f"sharded checkpoint {path!r} is malformed: surge_meta.pt counts {count} "
                                      f"optimizers, but the shards hold no param groups for optimizer {i}")
            try:
                states.append(_optim_names_to_ids(state))
            except (CheckpointError, TypeError, KeyError, AttributeError) as err:
                raise CheckpointError(f"sharded checkpoint {path!r} is malformed: optimizer {i}'s state: {err}") from err
        ckpt["optimizer_states"] = states
    check_fields(ckpt, repr(path))
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
    except CheckpointError as err:  # one line, as every surge command's errors
        print(f"surge consolidate: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    print(f"surge consolidate: wrote {args.out_file}")
    return 0
