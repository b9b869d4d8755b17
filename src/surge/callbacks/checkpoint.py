"""ModelCheckpoint: save the run at epoch ends, every n steps or every so much training time; keep the best
k and the last."""
import math
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Literal, Optional, Union

import torch

from ..files import url_scheme
from ..utils import MisconfigurationError, rank_zero_info, rank_zero_warn
from .base import Callback
from .checkpoint_names import CheckpointNames


def _is_url(path: str) -> bool:
    """Whether ``path`` names a remote or in-memory file system ("s3://...", "memory://..."), not a local path."""
    return url_scheme(path) not in (None, "file")


class ModelCheckpoint(CheckpointNames, Callback):
    """Save checkpoints during fit.

    Args:
        dirpath: folder for the files (default: ``<log_dir>/checkpoints``, or
            ``<default_root_dir>/checkpoints`` without a logger). ``~`` is expanded and the path made absolute.
        filename: a template such as ``"{epoch}-{val_loss:.3f}"``; names in braces are ``epoch``,
            ``step`` and any logged metric (default ``"epoch={epoch}-step={step}"``).
        monitor: the metric ranking checkpoints (``None``: the newest is the best); ``"epoch"`` and
            ``"step"`` work without being logged.
        verbose: say what was saved.
        save_last: also keep ``last.ckpt`` (:attr:`CHECKPOINT_NAME_LAST`, itself a template), always the
            newest state; ``"link"``: a symbolic link to the top-k file of the same save where there is one.
            ``None`` / ``False``: no last file.
        save_top_k: how many of the best to keep (``-1``: all, ``0``: none besides ``last``).
        save_on_exception: when fit raises, save the state it stopped in (named by ``filename``).
        save_weights_only: store only the weights and hyperparameters.
        mode: "min" or "max" for ``monitor``.
        every_n_train_steps / train_time_interval / every_n_epochs: when to save (one of them; default:
            every epoch end). ``train_time_interval`` (a ``datetime.timedelta``) is checked at batch ends.
        save_on_train_epoch_end: save at the training epoch's end rather than after validation.
        enable_version_counter: a name that exists already gets ``-v1``, ``-v2``... (:attr:`STARTING_VERSION`)
            instead of being overwritten. A run resumed from a checkpoint in this folder continues its own
            files and overwrites them.

    Example::

        surge.Trainer(callbacks=[ModelCheckpoint(monitor="val_loss", save_top_k=3, every_n_train_steps=500)])
    """

    reads_epoch_metrics = True
    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ".ckpt"
    STARTING_VERSION = 1

    def __init__(self, dirpath: Optional[Union[str, Path]] = None, filename: Optional[str] = None,
                 monitor: Optional[str] = None, verbose: bool = False,
                 save_last: Optional[Union[bool, Literal["link"]]] = None, save_top_k: int = 1,
                 save_on_exception: bool = False, save_weights_only: bool = False, mode: str = "min",
                 auto_insert_metric_name: bool = True, every_n_train_steps: Optional[int] = None,
                 train_time_interval: Optional[timedelta] = None, every_n_epochs: Optional[int] = None,
                 save_on_train_epoch_end: Optional[bool] = None, enable_version_counter: bool = True):
        if mode not in ("min", "max"):  # (Lightning's wording, which users match)
            raise MisconfigurationError(f"`mode` can be min, max but got {mode}")
        if not isinstance(save_top_k, int) or save_top_k < -1:
            raise MisconfigurationError(f"ModelCheckpoint: invalid save_top_k={save_top_k!r}. Must be >= -1 (an int)")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise MisconfigurationError(f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None) is not a valid "
                                        f"configuration: without a monitor there is nothing to rank k checkpoints "
                                        f"by (use -1 for all, 0 for none, 1 for the newest)")
        if save_last not in (None, True, False, "link"):
            raise MisconfigurationError(f"ModelCheckpoint(save_last={save_last!r}): choose True, False, None or 'link'")
        for name, v in (("every_n_epochs", every_n_epochs), ("every_n_train_steps", every_n_train_steps)):
            if v is not None and (not isinstance(v, int) or v < 0):
                raise MisconfigurationError(f"ModelCheckpoint: invalid {name}={v!r}. Must be >= 0 (an int) or None")
        if train_time_interval is not None and not isinstance(train_time_interval, timedelta):
            raise MisconfigurationError(f"ModelCheckpoint(train_time_interval={train_time_interval!r}) must be a "
                                        f"datetime.timedelta or None")
        if bool(every_n_train_steps) + bool(every_n_epochs) + (train_time_interval is not None) > 1:
            raise MisconfigurationError(f"ModelCheckpoint: Combination of parameters every_n_train_steps="
                                        f"{every_n_train_steps}, every_n_epochs={every_n_epochs} and train_time_interval="
                                        f"{train_time_interval}: give only one, not both (or all three)")
        if dirpath is not None:
            dirpath = os.fspath(dirpath)
            if not _is_url(dirpath):  # (a URL such as "s3://..." is kept as given)
                dirpath = os.path.realpath(os.path.expanduser(dirpath))
        self.dirpath = dirpath
        self._dirpath_from_logger = dirpath is None  # follows the logger's folder (which a resume may change)
        self.filename = filename
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.save_on_exception = save_on_exception
        self.train_time_interval = train_time_interval
        self.every_n_train_steps = every_n_train_steps or 0
        unscheduled = every_n_epochs is None and not every_n_train_steps and train_time_interval is None
        self.every_n_epochs = 1 if unscheduled else (every_n_epochs or 0)
        self.save_weights_only = save_weights_only
        self.save_on_train_epoch_end = save_on_train_epoch_end
        self.auto_insert_metric_name = auto_insert_metric_name
        self.enable_version_counter = enable_version_counter
        self.verbose = verbose
        self.best_k_models: dict[str, float] = {}  # monitored runs only; without a monitor it stays empty
        # The kept checkpoint the next better one replaces, and its score: set once the top k are full (as in
        # Lightning; before that "" and the worst possible score). Plain attributes a user may set.
        self.kth_best_model_path = ""
        self.kth_value: torch.Tensor = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.best_model_path = ""
        self.best_model_score: Optional[torch.Tensor] = None
        self.current_score: Optional[torch.Tensor] = None  # the monitored value of the latest top-k candidate
        self.last_model_path = ""
        self._last_global_step_saved = 0  # as in Lightning: before the first optimizer step there is nothing to save
        self._last_time_checked: Optional[float] = None  # time.monotonic() at the start or the last timed save
        self._continues_folder = False  # resumed from a checkpoint in dirpath: its files are this run's own

    # Lightning's private names for the schedule (its tests and some user code read them)
    @property
    def _every_n_train_steps(self) -> int:
        return self.every_n_train_steps

    @property
    def _every_n_epochs(self) -> int:
        return self.every_n_epochs

    @property
    def _train_time_interval(self) -> Optional[timedelta]:
        return self.train_time_interval

    @property
    def _enable_version_counter(self) -> bool:
        return self.enable_version_counter

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, every_n_train_steps=self.every_n_train_steps,
                                        every_n_epochs=self.every_n_epochs, train_time_interval=self.train_time_interval)

    @property
    def _legacy_state_keys(self) -> tuple:
        keys = (f"ModelCheckpoint{{monitor={self.monitor!r}, mode={self.mode!r}, every_n_train_steps="
                f"{self.every_n_train_steps}, every_n_epochs={self.every_n_epochs}}}",)
        return keys

    # ------------------------------------------------------------------ when to save
    def setup(self, trainer, pl_module, stage: str) -> None:
        """Resolve the folder, and tidy what killed saves left in it (rank 0; the others wait): before the
        Trainer looks for ``ckpt_path="last"``, so that a commit a crash interrupted is finished or undone."""
        self._resolve_dirpath(trainer)
        if self.save_last == "link" and _is_url(self.dirpath):
            raise ValueError(f"`ModelCheckpoint(save_last='link')` is only supported for local file paths, got "
                             f"`dirpath={self.dirpath}`: a symbolic link needs a local file system.")
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

    def on_train_start(self, trainer, pl_module) -> None:
        self._last_time_checked = time.monotonic()
        self._continues_folder = False
        # A resumed run starts at the step its checkpoint holds: saving that step again would write the same
        # state twice (or, in the accumulation window after it, a state that lacks the window's gradients).
        if trainer.ckpt_path is not None:
            self._last_global_step_saved = trainer.global_step
            here = os.path.realpath(self.dirpath) if self.dirpath else None
            self._continues_folder = os.path.dirname(os.path.realpath(trainer.ckpt_path)) == here

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self.every_n_train_steps
        step_due = bool(n) and trainer.global_step % n == 0
        time_due, now = False, None
        if self.train_time_interval is not None:
            now = time.monotonic()
            started = self._last_time_checked
            time_due = started is not None and now - started >= self.train_time_interval.total_seconds()
            if trainer.world_size > 1:  # clocks differ across ranks: rank 0's decides for all
                time_due = trainer.strategy.broadcast(time_due)
        if not (step_due or time_due) or trainer.global_step == self._last_global_step_saved:
            return
        if time_due:
            self._last_time_checked = now
        self._save(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._saves_on_train_epoch_end(trainer) and self._epoch_due(trainer):
            self._save(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        # Also inside an epoch (val_check_interval < 1 or a step count): each validation is a save, as in
        # Lightning, when every_n_epochs is due for the epoch it runs in.
        if (trainer.sanity_checking or self._saves_on_train_epoch_end(trainer)
                or not self._epoch_due(trainer, finished=False)):
            return
        self._save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
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
            self._save(trainer, pl_module, top_k=top_k)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """``save_on_exception``: write the state fit stopped in under ``filename`` (and ``last``), outside
        the top k. Not for ``SystemExit``: a preemption has written ``last.ckpt`` before it exits."""
        from ..states import TrainerFn

        if (not self.save_on_exception or isinstance(exception, SystemExit) or trainer.fast_dev_run
                or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or self.dirpath is None
                or trainer.global_step == self._last_global_step_saved):
            return
        metrics = self._monitor_candidates(trainer)
        path = self.format_checkpoint_name(metrics)
        try:
            self._last_global_step_saved = trainer.global_step
            last_path = self._last_path(trainer, metrics) if self.save_last else None
            if last_path is not None:
                self.last_model_path = last_path
            checkpoint = self._build(trainer)
            self._write(trainer, checkpoint, path)
            if last_path is not None:
                self._write(trainer, checkpoint, last_path)
            trainer.strategy.wait_for_checkpoint()  # on disk before the exception ends the process
        except Exception as err:  # the exception fit raised is the one to see; this one is only said
            rank_zero_warn(f"ModelCheckpoint(save_on_exception=True) could not save {path}: {err!r}")
            return
        rank_zero_info(f"ModelCheckpoint: {type(exception).__name__} ({exception}) stopped fit; saved {path}")

    def _saves_on_train_epoch_end(self, trainer) -> bool:
        if self.save_on_train_epoch_end is not None:
            return self.save_on_train_epoch_end
        # Lightning's rule: without validation, save when the training epoch ends; with validation that
        # runs once at each epoch's end, too (its metrics are there then); otherwise (validation inside the
        # epoch, or not every epoch) after each validation.
        if not trainer._validates_in_fit:
            return True
        if trainer.check_val_every_n_epoch != 1:
            return False
        return isinstance(trainer.val_check_interval, float) and trainer.val_check_interval == 1.0

    def _epoch_due(self, trainer, finished: bool = True) -> bool:
        """Whether ``every_n_epochs`` asks for a save in this epoch (``finished``: and the epoch is over)."""
        if not self.every_n_epochs or (finished and not trainer._epoch_finished):
            return False
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # ------------------------------------------------------------------ saving
    def _build(self, trainer) -> dict:
        trainer._note_checkpoint()  # the loggers write out the history this checkpoint covers
        with trainer._rng_of_training():  # after a validation: the random state training continues with
            return trainer._checkpoint_dict(self.save_weights_only)

    def _save(self, trainer, pl_module, top_k: bool = True) -> None:
        """Save a top-k candidate (when ``top_k``) and the last checkpoint (when ``save_last``) of this step."""
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        metrics = self._monitor_candidates(trainer)
        self._last_global_step_saved = trainer.global_step
        # Rank first and build the checkpoint after, so that the state it records (best_k_models,
        # last_model_path) already names the files it is written to; a resume then keeps them.
        top_k_path, stale = self._update_top_k(trainer, metrics) if top_k and self.save_top_k != 0 else (None, [])
        last_path = previous_last = None
        if self.save_last:
            last_path = self._last_path(trainer, metrics)
            previous_last, self.last_model_path = self.last_model_path, last_path
        if top_k_path is not None or last_path is not None:
            # Each file through trainer.save_checkpoint, as Lightning writes them: code that wraps or patches
            # it sees every save. (On an exception, below, the files are written without its barrier.)
            if top_k_path is not None:
                self._save_file(trainer, top_k_path)
                if self.verbose and trainer.is_global_zero:
                    score = self.best_k_models.get(top_k_path)
                    print(f"ModelCheckpoint: saved {top_k_path}" + (f" ({self.monitor}={score:.5g})" if self.monitor else ""))
            if last_path is not None:
                if self.save_last == "link" and top_k_path is not None:
                    self._link(trainer, top_k_path, last_path)
                else:
                    self._save_file(trainer, last_path)
            # Drop the worst (and a last file under an older name) only after the new files are complete on
            # disk (an asynchronous save: the strategy deletes them once it is committed).
            for path in stale:  # (never the checkpoint fit resumed from, nor a file outside this folder)
                if path not in (top_k_path, last_path) and self._ours_to_remove(trainer, path):
                    trainer.strategy.remove_checkpoint(path)  # rank 0; a sharded checkpoint is a folder
            if previous_last and previous_last != last_path and self._ours_to_remove(trainer, previous_last):
                trainer.strategy.remove_checkpoint(previous_last)
            if trainer.is_global_zero:  # e.g. WandbLogger(log_model="all") uploads the new files
                for lg in trainer.loggers:
                    trainer._logger_guard.call(lg, "after_save_checkpoint", self)
        trainer.strategy.barrier("ModelCheckpoint")

    def _update_top_k(self, trainer, metrics) -> tuple:
        """Rank this save among the best k: ``(path to write or None, paths that dropped out)``."""
        if self.monitor is None:
            # No metric, no ranking: the newest save is the best one; with save_top_k=1 it replaces the one
            # before (a file of this callback's own), with -1 every save is kept. best_k_models stays empty.
            previous = self.best_model_path
            path = self._free_name(trainer, metrics, None, previous)
            if trainer.world_size > 1:
                path = trainer.strategy.broadcast(path)
            self.best_model_path = path
            drop = self.save_top_k == 1 and previous and previous != path and self._ours_to_remove(trainer, previous)
            return path, [previous] if drop else []
        # Every rank must take the same branch (each builds the checkpoint: its random state goes in),
        # and a metric logged without sync_dist differs across ranks: rank 0's value decides for all.
        logged = metrics.get(self.monitor)
        mine = float(logged) if logged is not None else None
        if trainer.world_size > 1:
            mine = trainer.strategy.broadcast(mine)
        if mine is None:
            rank_zero_warn(f"ModelCheckpoint(monitor={self.monitor!r}) found no such metric; logged: {sorted(metrics)}."
                           f" Not saving a top-k checkpoint this time.")
            return None, []
        score = mine
        if math.isnan(score):  # a NaN ranks last, never first
            score = math.inf if self.mode == "min" else -math.inf
        if not self._is_better(score):
            return None, []
        full = self.save_top_k != -1 and len(self.best_k_models) >= self.save_top_k
        replaced = self.kth_best_model_path if full else ""
        path = self._free_name(trainer, metrics, None, replaced)
        if trainer.world_size > 1:  # a name filled in with metrics: one file (or one sharded folder) for all
            path = trainer.strategy.broadcast(path)
        # current_score keeps the logged value's own dtype (a float32 metric stays float32), as Lightning does
        dtype = logged.dtype if isinstance(logged, torch.Tensor) and logged.is_floating_point() else None
        self.current_score = torch.tensor(score, dtype=dtype)
        self.best_k_models[path] = score
        keep = self.save_top_k if self.save_top_k != -1 else len(self.best_k_models)
        ordered = sorted(self.best_k_models, key=lambda p: self.best_k_models[p], reverse=self.mode == "max")
        stale = ordered[keep:]
        for p in stale:
            del self.best_k_models[p]
        self.best_model_path = ordered[0]
        self.best_model_score = torch.tensor(self.best_k_models[ordered[0]])
        if len(self.best_k_models) == keep:  # the top k are full: the worst kept is the next to go
            self.kth_best_model_path = ordered[keep - 1]
            self.kth_value = torch.tensor(self.best_k_models[self.kth_best_model_path])
        return path, stale

    def _is_better(self, score: float) -> bool:
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        worst = max(self.best_k_models.values()) if self.mode == "min" else min(self.best_k_models.values())
        return score < worst if self.mode == "min" else score > worst

    def check_monitor_top_k(self, trainer, current: Optional[torch.Tensor] = None) -> bool:
        """Whether ``current`` (a value of ``monitor``) would enter the top k now."""
        return current is not None and self._is_better(float(current))

    def _save_file(self, trainer, path) -> None:
        _drop_link(trainer, path)
        trainer.save_checkpoint(path, self.save_weights_only)

    def _write(self, trainer, checkpoint, path) -> None:
        _drop_link(trainer, path)
        trainer.strategy.save_checkpoint(checkpoint, path)  # rank 0 writes a file, or every rank its shards

    def _link(self, trainer, target: str, link: str) -> None:
        """``save_last="link"``: point ``link`` at ``target`` (relative, replaced atomically), once
        ``target`` is complete on disk."""
        trainer.strategy.wait_for_checkpoint()  # never a link to a save still in flight
        if trainer.is_global_zero and os.path.abspath(target) != os.path.abspath(link):
            if os.path.isdir(link) and not os.path.islink(link):
                trainer.strategy.remove_checkpoint(link)  # a sharded last folder from before
            tmp = os.path.join(os.path.dirname(link), f".{os.path.basename(link)}.link-{os.getpid()}")
            try:
                os.symlink(os.path.relpath(target, os.path.dirname(link)), tmp)
                os.replace(tmp, link)
            except OSError:
                if os.path.lexists(tmp):
                    os.remove(tmp)
                import shutil  # no symbolic links here (some file systems): a copy

                if os.path.isdir(target):
                    shutil.copytree(target, link, dirs_exist_ok=True)
                else:
                    shutil.copyfile(target, link)
        trainer.strategy.barrier("ModelCheckpoint.link")

    def _ours_to_remove(self, trainer, path: str) -> bool:
        """A file this callback wrote earlier and may delete: in its folder, and not the one fit resumed from."""
        if trainer.ckpt_path is not None and os.path.abspath(trainer.ckpt_path) == os.path.abspath(path):
            return False
        return self.dirpath is not None and os.path.dirname(os.path.abspath(path)) == os.path.abspath(self.dirpath)

    def to_yaml(self, filepath: Optional[Union[str, Path]] = None) -> None:
        """Write :attr:`best_k_models` (path: score) as YAML to ``filepath`` (default:
        ``<dirpath>/best_k_models.yaml``)."""
        import yaml

        if filepath is None:
            if self.dirpath is None:
                raise MisconfigurationError("ModelCheckpoint.to_yaml(): no dirpath yet; pass a filepath")
            filepath = os.path.join(self.dirpath, "best_k_models.yaml")
        with open(filepath, "w") as f:
            yaml.dump({p: float(s) for p, s in self.best_k_models.items()}, f)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        def plain(t):
            return None if t is None else float(t)

        current = None if self.current_score is None else self.current_score.detach().cpu()  # its own dtype
        return {"monitor": self.monitor, "best_model_score": plain(self.best_model_score),
                "best_model_path": self.best_model_path, "current_score": current,
                "best_k_models": dict(self.best_k_models), "kth_best_model_path": self.kth_best_model_path,
                "kth_value": plain(self.kth_value), "last_model_path": self.last_model_path, "dirpath": self.dirpath}

    def load_state_dict(self, state: dict) -> None:
        saved_dir = state.get("dirpath")
        if saved_dir not in (None, self.dirpath):
            # Another folder: its files are not ours to rank or delete; only which file was best is kept.
            rank_zero_warn(f"The dirpath has changed from {saved_dir!r} to {self.dirpath!r}: best_model_score, "
                           f"kth_best_model_path, kth_value, last_model_path and best_k_models are not restored, "
                           f"only best_model_path")
            self.best_model_path = state.get("best_model_path", self.best_model_path)
            return
        self.best_k_models = {p: float(s) for p, s in state.get("best_k_models", {}).items() if os.path.exists(p)}
        self.best_model_path = state.get("best_model_path", "")
        score = state.get("best_model_score")
        self.best_model_score = None if score is None else torch.tensor(float(score))
        current = state.get("current_score")
        self.current_score = None if current is None else torch.as_tensor(current).detach().clone()
        self.last_model_path = state.get("last_model_path", "")
        kth = state.get("kth_best_model_path", "")
        if kth in self.best_k_models:  # (a file that is gone no longer counts among the k)
            self.kth_best_model_path = kth
            self.kth_value = torch.tensor(self.best_k_models[kth])


def _drop_link(trainer, path: str) -> None:
    """A "link" last file is replaced by the new checkpoint itself, not written through to what it points to."""
    if trainer.is_global_zero and os.path.islink(path):
        os.remove(path)
