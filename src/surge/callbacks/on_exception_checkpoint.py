"""OnExceptionCheckpoint: save the run as it stands when it stops on an error."""
from __future__ import annotations

import os
from typing import Union

from ..utils import rank_zero_warn
from .base import Callback


class OnExceptionCheckpoint(Callback):
    """Write ``<dirpath>/<filename>.ckpt`` when the run raises (an error, Ctrl-C, a preemption exit).

    The file is a full checkpoint of that moment (weights, optimizers, the position in the epoch, the
    callbacks' state): ``trainer.fit(model, ckpt_path=callback.ckpt_path)`` continues from it. An earlier
    file of that name is replaced. A fit that ends without an error deletes the file at its end, so that
    a resumed run that completes leaves no stale exception checkpoint behind.

    ``dirpath`` is required: an error can come before any logger or folder exists. With several processes
    the save is a collective, as every checkpoint is: it completes when the error reaches every rank (Ctrl-C,
    a preemption, a failure of the same data on all ranks); an error on a single rank leaves the others in
    their next collective, which then times out. A save that fails itself only warns, so the run's own
    error is what the caller sees.

    Example::

        surge.Trainer(callbacks=[OnExceptionCheckpoint("checkpoints")])  # -> checkpoints/on_exception.ckpt
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: Union[str, os.PathLike], filename: str = "on_exception") -> None:
        if not filename:
            raise ValueError("The filename cannot be empty")
        self.dirpath = dirpath
        self.filename = filename

    @property
    def ckpt_path(self) -> str:
        """Where the checkpoint goes: ``<dirpath>/<filename>.ckpt``."""
        return os.path.join(os.path.expanduser(os.fspath(self.dirpath)), self.filename + self.FILE_EXTENSION)

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        try:
            trainer.save_checkpoint(self.ckpt_path)
        except Exception as err:  # e.g. the error came before the optimizers existed
            rank_zero_warn(f"OnExceptionCheckpoint could not save {self.ckpt_path} after "
                           f"{type(exception).__name__}: {type(err).__name__}: {err}")

    def teardown(self, trainer, module, stage: str) -> None:
        if stage == "fit":  # reached only when fit succeeded: nothing to resume from any more
            trainer.strategy.remove_checkpoint(self.ckpt_path)
