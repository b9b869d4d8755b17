"""ModelCheckpoint: save the run at epoch ends or every n steps, keep the best k and the last."""
from __future__ import annotations

import math
import os
import re
from typing import Optional

import torch

from ..utils import MisconfigurationError, rank_zero_warn
from .base import Callback


class ModelCheckpoint(Callback):
    """Save checkpoints during fit.

    Args:
        dirpath: folder for the files (default: ``<log_dir>/checkpoints``, or
            ``<default_root_dir>/checkpoints`` without a logger).
        filename: a template such as ``"{epoch}-{val_loss:.3f}"``; names in braces are ``epoch``,
            ``step`` and any logged metric (default ``"epoch={epoch}-step={step}"``).
        monitor: the metric ranking checkpoints (``None``: the newest is the best).
        mode: "min" or "max" for ``monitor``.
        save_top_k: how many of the best to keep (``-1``: all, ``0``: none besides ``last``).
        save_last: also keep ``last.ckpt``, always the newest state.
        every_n_epochs / every_n_train_steps: when to save (default: every epoch end).
        save_weights_only: store only the weights and hyperparameters.

    Example::

        surge.Trainer(callbacks=[ModelCheckpoint(monitor="val_loss", save_top_k=3, every_n_train_steps=500)])
    """

    reads_epoch_metrics = True
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: Optional[str] = None, filename: Optional[str] = None, monitor: Optional[str] = None,
                 mode: str = "min", save_top_k: int = 1, save_last: Optional[bool] = None,
                 every_n_epochs: Optional[int] = None, every_n_train_steps: Optional[int] = None,
                 save_weights_only: bool = False, save_on_train_epoch_end: Optional[bool] = None,
                 auto_insert_metric_name: bool = True, verbose: bool = False):
        if mode not in ("min", "max"):
            raise MisconfigurationError(f"ModelCheckpoint(mode={mode!r}): choose 'min' or 'max'")
        if not isinstance(save_top_k, int) or save_top_k < -1:
            raise MisconfigurationError(f"ModelCheckpoint(save_top_k={save_top_k!r}) must be an int >= -1")
        for name, v in (("every_n_epochs", every_n_epochs), ("every_n_train_steps", every_n_train_steps)):
            if v is not None and (not isinstance(v, int) or v < 0):
                raise MisconfigurationError(f"ModelCheckpoint({name}={v!r}) must be an int >= 0 or None")
        if every_n_train_steps and every_n_epochs:
            raise MisconfigurationError("ModelCheckpoint: give every_n_epochs or every_n_train_steps, not both")
        self.dirpath = os.fspath(dirpath) if dirpath is not None else None
        self._dirpath_from_logger = dirpath is None  # follows the logger's folder (which a resume may change)
        self.filename = filename
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.every_n_train_steps = every_n_train_steps or 0
        self.every_n_epochs = 1 if every_n_epochs is None and not every_n_train_steps else (every_n_epochs or 0)
        self.save_weights_only = save_weights_only
        self.save_on_train_epoch_end = save_on_train_epoch_end
        self.auto_insert_metric_name = auto_insert_metric_name
        self.verbose = verbose
        self.best_k_models: dict[str, float] = {}
        self.best_model_path = ""
        self.best_model_score: Optional[torch.Tensor] = None
        self.last_model_path = ""
        self._last_global_step_saved = 0  # as in Lightning: before the first optimizer step there is nothing to save

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, every_n_train_steps=self.every_n_train_steps,
                                        every_n_epochs=self.every_n_epochs, train_time_interval=None)

    @property
    def _legacy_state_keys(self) -> tuple:
        return (f"ModelCheckpoint{{monitor={self.monitor!r}, mode={self.mode!r}, every_n_train_steps="
                f"{self.every_n_train_steps}, every_n_epochs={self.every_n_epochs}}}",)

    @property
    def kth_best_model_path(self) -> str:
        """The path of the worst checkpoint kept among the top k ("" before the first): the one the next
        better checkpoint replaces."""
        if not self.best_k_models:
            return ""
        pick = min if self.mode == "max" or self.monitor is None else max  # (no monitor: ranked by step)
        return pick(self.best_k_models, key=self.best_k_models.get)

    @property
    def kth_value(self):
        """The score of :attr:`kth_best_model_path` (a tensor; None before the first checkpoint)."""
        path = self.kth_best_model_path
        return torch.tensor(self.best_k_models[path]) if path else None

    # ------------------------------------------------------------------ when to save
    def setup(self, trainer, module, stage: str) -> None:
        """Resolve the folder, and tidy what killed saves left in it (rank 0; the others wait): before the
        Trainer looks for ``ckpt_path="last"``, so that a commit a crash interrupted is finished or undone."""
        self._resolve_dirpath(trainer)
        if trainer.is_global_zero:
            from ..checkpoint_search import tidy

            for note in tidy(self.dirpath, self.FILE_EXTENSION):
                print(f"ModelCheckpoint: {note}", flush=True)
        trainer.strategy.barrier("ModelCheckpoint.setup")

    def _resolve_dirpath(self, trainer) -> None:
        """Default folder: ``<log_dir>/checkpoints``; re-run once a resume restored the logger's version."""
        if self.dirpath is None or self._dirpath_from_logger:
            base = trainer.log_dir if trainer.loggers else trainer.default_root_dir
            self.dirpath = os.path.join(base, "checkpoints")

    def on_train_start(self, trainer, module) -> None:
        # A resumed run starts at the step its checkpoint holds: saving that step again would write the same
        # state twice (or, in the accumulation window after it, a state that lacks the window's gradients).
        if trainer.ckpt_path is not None:
            self._last_global_step_saved = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0 and trainer.global_step != self._last_global_step_saved:
            self._save(trainer, module)

    def on_train_epoch_end(self, trainer, module) -> None:
        if self._saves_on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._save(trainer, module)

    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking or self._saves_on_train_epoch_end(trainer) or not self._epoch_due(trainer):
            return
        self._save(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        """Save the state fit ends with, as this callback's schedule says, unless this step is saved already.

        A fit that stops inside an epoch (``max_steps``, ``should_stop``) under an epoch schedule saves as
        at that epoch's end, as Lightning does there: a top-k candidate (ranked by ``monitor`` when it was
        logged) when ``every_n_epochs`` is due. Off the schedule (a step schedule, an epoch that
        ``every_n_epochs`` skips) no top-k candidate is added, but ``last.ckpt`` (when ``save_last``) is
        always the state fit ended with.
        """
        if trainer.global_step == self._last_global_step_saved:
            return
        inside_epoch = trainer.state.batch_idx > 0  # the loop resets it to 0 when an epoch completes
        top_k = inside_epoch and self.every_n_epochs > 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if top_k or self.save_last:
            self._save(trainer, module, top_k=top_k)

    def _saves_on_train_epoch_end(self, trainer) -> bool:
        if self.save_on_train_epoch_end is not None:
            return self.save_on_train_epoch_end
        # Without validation at the end of this epoch, save when the training epoch ends.
        return not trainer._validates_in_fit or not trainer._epoch_finished

    def _epoch_due(self, trainer) -> bool:
        if not self.every_n_epochs or not trainer._epoch_finished:
            return False
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # ------------------------------------------------------------------ saving
    def _save(self, trainer, module, top_k: bool = True) -> None:
        """Save a top-k candidate (when ``top_k``) and ``last.ckpt`` (when ``save_last``) of this step."""
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        metrics = dict(trainer.callback_metrics)
        self._last_global_step_saved = trainer.global_step
        # Rank first and build the checkpoint after, so that the state it records (best_k_models,
        # last_model_path) already names the files it is written to; a resume then keeps them.
        top_k_path, stale = self._update_top_k(trainer, metrics) if top_k and self.save_top_k != 0 else (None, [])
        last_path = None
        if self.save_last:
            last_path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
            self.last_model_path = last_path
        if top_k_path is not None or last_path is not None:
            trainer._note_checkpoint()  # the loggers write out the history this checkpoint covers
            with trainer._rng_of_training():  # after a validation: the random state training continues with
                checkpoint = trainer._checkpoint_dict(self.save_weights_only)
            if top_k_path is not None:
                self._write(trainer, checkpoint, top_k_path)
                if self.verbose and trainer.is_global_zero:
                    score = self.best_k_models[top_k_path]
                    print(f"ModelCheckpoint: saved {top_k_path}" + (f" ({self.monitor}={score:.5g})" if self.monitor else ""))
            # Drop the worst only after the new file is complete on disk (an asynchronous save: the
            # strategy deletes them once it is committed).
            for path in stale:
                if path != top_k_path:
                    trainer.strategy.remove_checkpoint(path)  # rank 0; a sharded checkpoint is a folder
            if last_path is not None:
                self._write(trainer, checkpoint, last_path)
        trainer.strategy.barrier("ModelCheckpoint")

    def _update_top_k(self, trainer, metrics) -> tuple:
        """Rank this save among the best k: ``(path to write or None, paths that dropped out)``."""
        score = None
        if self.monitor is not None:
            # Every rank must take the same branch (each builds the checkpoint: its random state goes in),
            # and a metric logged without sync_dist differs across ranks: rank 0's value decides for all.
            mine = float(metrics[self.monitor]) if self.monitor in metrics else None
            if trainer.world_size > 1:
                mine = trainer.strategy.broadcast(mine)
            if mine is None:
                rank_zero_warn(f"ModelCheckpoint(monitor={self.monitor!r}) found no such metric; logged: {sorted(metrics)}."
                               f" Not saving a top-k checkpoint this time.")
                return None, []
            score = mine
            if math.isnan(score):
                score = math.inf if self.mode == "min" else -math.inf
        path = self._path(trainer, metrics)
        if trainer.world_size > 1:  # a name filled in with metrics: one file (or one sharded folder) for all
            path = trainer.strategy.broadcast(path)
        if self.monitor is None:
            # No metric: the newest checkpoints are the best ones.
            score = float(trainer.global_step)
        elif not self._is_better(score):
            return None, []
        self.best_k_models[path] = score
        keep = self.save_top_k if self.save_top_k != -1 else len(self.best_k_models)
        ordered = sorted(self.best_k_models, key=lambda p: self.best_k_models[p],
                         reverse=self.mode == "max" or self.monitor is None)
        stale = ordered[keep:]
        for p in stale:
            del self.best_k_models[p]
        self.best_model_path = ordered[0]
        self.best_model_score = torch.tensor(self.best_k_models[ordered[0]])
        return path, stale

    def _is_better(self, score: float) -> bool:
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        worst = max(self.best_k_models.values()) if self.mode == "min" else min(self.best_k_models.values())
        return score < worst if self.mode == "min" else score > worst

    def _write(self, trainer, checkpoint, path) -> None:
        trainer.strategy.save_checkpoint(checkpoint, path)  # rank 0 writes a file, or every rank its shards

    def _path(self, trainer, metrics) -> str:
        """The file name for this save: the template with ``{name}`` and ``{name:fmt}`` filled in."""
        values = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        values.update({k: float(v) for k, v in metrics.items()})

        def fill(match):
            name, spec = match.group(1), match.group(2) or ""
            if name not in values:
                rank_zero_warn(f"ModelCheckpoint(filename={self.filename!r}): {name!r} was not logged; writing 0")
            text = format(values.get(name, 0), spec[1:])
            return f"{name.replace('/', '_')}={text}" if self.auto_insert_metric_name else text

        name = re.sub(r"\{([^{}:]+)(:[^{}]*)?\}", fill, self.filename or "{epoch}-{step}")
        return os.path.join(self.dirpath, name + self.FILE_EXTENSION)

    def find_existing(self, trainer) -> list[str]:
        """Checkpoints already in this callback's folder: files or sharded folders named ``*.ckpt``, without
        the temporaries of saves in progress. (Which of them ``ckpt_path="last"`` means, and in which run's
        folder, is :mod:`surge.checkpoint_search`'s job.)"""
        from ..checkpoint_search import checkpoints_in

        return checkpoints_in(self.dirpath) if self.dirpath is not None else []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {"monitor": self.monitor, "best_model_score": None if self.best_model_score is None else float(self.best_model_score),
                "best_model_path": self.best_model_path, "best_k_models": dict(self.best_k_models),
                "last_model_path": self.last_model_path, "dirpath": self.dirpath}

    def load_state_dict(self, state: dict) -> None:
        if state.get("dirpath") not in (None, self.dirpath):
            return  # another folder: its files are not ours to rank or delete
        self.best_k_models = {p: s for p, s in state.get("best_k_models", {}).items() if os.path.exists(p)}
        self.best_model_path = state.get("best_model_path", "")
        score = state.get("best_model_score")
        self.best_model_score = None if score is None else torch.tensor(score)
        self.last_model_path = state.get("last_model_path", "")
