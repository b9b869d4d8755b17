"""What ModelCheckpoint's files are called: the filename template filled in from the logged metrics, the
``-v<n>`` of a name already taken, and the checkpoints already in its folder."""
import os
import re
from typing import Optional

import torch

from ..utils import rank_zero_warn


class CheckpointNames:
    """The naming half of :class:`~surge.callbacks.ModelCheckpoint` (a base of it; it reads the callback's
    ``filename``, ``dirpath``, ``auto_insert_metric_name``, ``enable_version_counter`` and the class's
    ``CHECKPOINT_*`` / ``FILE_EXTENSION`` / ``STARTING_VERSION`` constants)."""

    def _monitor_candidates(self, trainer) -> dict:
        """``trainer.callback_metrics`` with ``epoch`` and ``step`` (ints) added where they were not logged."""
        metrics = dict(trainer.callback_metrics)
        # The epoch the saved state is in: after fit ended inside an epoch, current_epoch already counts that
        # epoch, and the file saved at on_train_end is named as Lightning names it, by the epoch it was cut in.
        for key, value in (("epoch", trainer.state.epoch), ("step", trainer.global_step)):
            logged = metrics.get(key)
            metrics[key] = logged.int() if isinstance(logged, torch.Tensor) else torch.tensor(value)
        return metrics

    def format_checkpoint_name(self, metrics: dict, filename: Optional[str] = None, ver: Optional[int] = None,
                               prefix: Optional[str] = None) -> str:
        """The path for a save: ``filename`` (default: this callback's) with ``{name}`` and ``{name:fmt}``
        filled in from ``metrics`` (a name missing from them is 0), then ``prefix-`` before it and ``-v<ver>``
        after it, in :attr:`dirpath` (without a folder when it is not known yet).

        Example::

            ModelCheckpoint(dirpath="ck", filename="{epoch:02d}-{val_loss:.2f}").format_checkpoint_name(
                {"epoch": 3, "val_loss": 0.1234})                   # "ck/epoch=03-val_loss=0.12.ckpt"
        """
        template = filename or self.filename or ("{epoch}" + self.CHECKPOINT_JOIN_CHAR + "{step}")

        def value(v):
            return v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v

        def fill(match):
            name, spec = match.group(1), match.group(2) or ""
            text = format(value(metrics[name]) if name in metrics else 0, spec[1:])
            if self.auto_insert_metric_name:
                return f"{name.replace('/', '_')}{self.CHECKPOINT_EQUALS_CHAR}{text}"
            return text

        name = re.sub(r"\{([^{}:]+)(:[^{}]*)?\}", fill, template)
        if prefix is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join((prefix, name))
        if ver is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join((name, f"v{ver}"))
        name += self.FILE_EXTENSION
        return os.path.join(self.dirpath, name) if self.dirpath else name

    def _path(self, trainer, metrics) -> str:
        missing = [m.group(1) for m in re.finditer(r"\{([^{}:]+)(:[^{}]*)?\}", self.filename or "")
                   if m.group(1) not in metrics]
        if missing:
            rank_zero_warn(f"ModelCheckpoint(filename={self.filename!r}): {missing} were not logged; writing 0")
        return self.format_checkpoint_name(metrics)

    def file_exists(self, filepath: str, trainer) -> bool:
        """Whether ``filepath`` is taken: on disk (as rank 0 sees it, for every rank) or a top-k checkpoint
        this callback is still writing."""
        taken = filepath in self.best_k_models or os.path.lexists(filepath) if trainer.is_global_zero else False
        return trainer.strategy.broadcast(taken) if trainer.world_size > 1 else taken

    def _free_name(self, trainer, metrics, filename: Optional[str], mine: str) -> str:
        """The name for a save; with ``enable_version_counter``, a name taken by another file gets the
        first free ``-v<n>``. ``mine`` (the file this save replaces) is not another file, and neither is
        anything in the folder of the checkpoint fit resumed from: that run's files are this run's own."""
        if filename is None:
            path = self._path(trainer, metrics)
        else:
            path = self.format_checkpoint_name(metrics, filename)
        if not self.enable_version_counter or self._continues_folder:
            return path
        ver = self.STARTING_VERSION
        while path != mine and self.file_exists(path, trainer):
            path = self.format_checkpoint_name(metrics, filename, ver=ver)
            ver += 1
        return path

    def _last_path(self, trainer, metrics) -> str:
        return self._free_name(trainer, metrics, self.CHECKPOINT_NAME_LAST, self.last_model_path)

    def find_existing(self, trainer) -> list[str]:
        """Checkpoints already in this callback's folder: files or sharded folders named ``*.ckpt``, without
        the temporaries of saves in progress. (Which of them ``ckpt_path="last"`` means, and in which run's
        folder, is :mod:`surge.checkpoint_search`'s job.)"""
        from ..checkpoint_search import checkpoints_in

        return checkpoints_in(self.dirpath) if self.dirpath is not None else []
