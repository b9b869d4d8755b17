"""Saving a run to a checkpoint and restoring it, part of the Trainer."""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

from . import resume
from .checkpoint import CheckpointError
from .utils import MisconfigurationError, rank_zero_info, rank_zero_warn


class CheckpointHandling:
    """Trainer methods that save and restore the whole run; mixed into :class:`surge.Trainer`."""

    def save_checkpoint(self, filepath: str, weights_only: bool = False) -> None:
        """Write a checkpoint of the run to ``filepath`` atomically (rank 0 writes; all ranks wait)."""
        self._note_checkpoint()  # the history this checkpoint covers goes to disk with it
        with self._rng_of_training():  # called from a validation hook: training's random state goes in
            checkpoint = self._checkpoint_dict(weights_only)
        self.strategy.save_checkpoint(checkpoint, filepath)
        self.strategy.barrier("save_checkpoint")

    def _checkpoint_dict(self, weights_only: bool = False) -> dict:
        from . import __version__
        from .checkpoint import FORMAT_KEY, FORMAT_VERSION

        module = self.module
        if getattr(self, "_claims_run_folders", False) and self.is_global_zero:
            self._claim_run_folders()
        state = self.state.state_dict()
        if self._epoch_finished:
            # Saved after the epoch's last batch: a resume starts the next epoch.
            state.update(epoch=self.state.epoch + 1, batch_idx=0)
        hparams, skipped = module._plain_hparams()
        if skipped:
            rank_zero_warn(f"hyperparameters {skipped} are not plain data and are not saved in the checkpoint; "
                           f"pass them to load_from_checkpoint(...) yourself")
        ckpt = {
            FORMAT_KEY: FORMAT_VERSION,
            "surge_version": __version__,
            "torch_version": str(torch.__version__),
            "epoch": self.state.epoch,
            "global_step": self.state.global_step,
            "state_dict": self.strategy.module_state_dict(),
            "hyper_parameters": hparams,
        }
        if not weights_only:
            ckpt["trainer_state"] = state
            ckpt["optimizer_states"] = [self.strategy.optimizer_state_dict(o) for o in self.optimizers]
            ckpt["lr_schedulers"] = [c.scheduler.state_dict() for c in self.lr_scheduler_configs]
            ckpt["precision"] = self.strategy.precision.state_dict()
            ckpt["callbacks"] = {cb.state_key: cb.state_dict() for cb in self.callbacks if cb.state_dict()}
            ckpt["loggers"] = [lg.state_dict() for lg in self.loggers]
            position = None
            if not self._epoch_finished and self.state.batch_idx > 0:
                position = ckpt["data_position"] = resume.position(self._train_loader, self._tracker,
                                                                   self._epoch_loader_state, self.state.batch_idx)
            # Every rank's random state (a collective): ranks draw different amounts of randomness.
            own = resume.rank_state() if position is None else \
                resume.rank_state(position["loader_state"], position["sampler_state"])
            ckpt["rank_states"] = resume.gather_rank_states(self.strategy, own)
            ckpt["rng"] = ckpt["rank_states"][0]["rng"]  # rank 0's, where older surge versions read it
            if self._epoch_finished:
                # End-of-epoch checkpoints are written before that epoch's schedulers step; the resume steps them.
                ckpt["epoch_schedulers_pending"] = {
                    c.monitor: float(self.callback_metrics[c.monitor]) for c in self.lr_scheduler_configs
                    if c.interval == "epoch" and c.monitor is not None and c.monitor in self.callback_metrics}
            if self.datamodule is not None:
                ckpt["datamodule"] = self.datamodule.state_dict()
                ckpt["datamodule_hyper_parameters"] = self.datamodule._plain_hparams()[0]
        module.on_save_checkpoint(ckpt)
        for cb in self.callbacks:
            cb.on_save_checkpoint(self, module, ckpt)
        return ckpt

    def _resolve_ckpt_path(self, ckpt_path, stage: str) -> Optional[str]:
        if ckpt_path is None:
            return None
        if ckpt_path in ("last", "best"):
            return self._find_run_checkpoint(ckpt_path, stage)
        if not isinstance(ckpt_path, (str, os.PathLike)):
            raise MisconfigurationError(f'ckpt_path must be "last", "best" or a file path, got {ckpt_path!r}')
        return os.fspath(ckpt_path)

    def _find_run_checkpoint(self, which: str, stage: str) -> Optional[str]:
        """This run's "last" or "best" checkpoint (see :mod:`surge.checkpoint_search`). Rank 0 looks on disk
        (and takes the run's lock in fit) and tells the others, errors included, so every rank loads one file."""
        from . import checkpoint_search

        found = why = None
        if self.is_global_zero:
            if which == "last":
                found, why = checkpoint_search.find_last(self, fit=stage == "fit")
            else:
                found, why = checkpoint_search.find_best(self)
        if self.world_size > 1:
            found, why = self.strategy.broadcast((found, why))
        if found is not None:
            return found
        if which == "best":
            cb = self.checkpoint_callback
            raise MisconfigurationError(
                'ckpt_path="best" but no best checkpoint exists yet'
                + (" (checkpointing is disabled)" if cb is None else "")
                + f"; run fit() with a ModelCheckpoint first, or pass a file path ({why})")
        if stage == "fit":
            rank_zero_warn(f'ckpt_path="last" found no checkpoint of this run {why}; starting from scratch')
            return None
        raise MisconfigurationError(f'ckpt_path="last" found no checkpoint of this run {why}')

    def _claim_run_folders(self) -> None:
        """Take the run lock of this run's folder (``log_dir``), when its first checkpoint is written there
        (``<log_dir>/checkpoints``, ModelCheckpoint's default), so that ``ckpt_path="last"`` in another process
        knows the run is alive (see :mod:`surge.checkpoint_search`)."""
        from . import checkpoint_search

        self._claims_run_folders = False  # once per fit
        callbacks = self.checkpoint_callbacks
        if callbacks and not any(cb._dirpath_from_logger for cb in callbacks):
            return  # checkpoints in folders the user named: they are the run's identity, and log_dir is not theirs
        try:
            if not checkpoint_search.claim(self.log_dir):
                checkpoint_search.warn_if_alive(self.log_dir)
        except OSError as err:  # an unwritable folder: the save itself reports it, naming the file
            rank_zero_warn(f"cannot mark {self.log_dir} as this run's folder ({err}); ckpt_path='last' in another "
                           f"process cannot tell whether this run is alive")

    def _release_run_folders(self) -> None:
        """End of fit: let go of this run's lock (the OS does it if the process ends first)."""
        from . import checkpoint_search

        self._claims_run_folders = False
        if self.is_global_zero:
            checkpoint_search.release(self.log_dir)

    def _load_for_stage(self, stage: str, ckpt_path) -> None:
        self._claims_run_folders = stage == "fit"  # the first checkpoint of this fit marks its folders as in use
        path = self._resolve_ckpt_path(ckpt_path, stage)
        self._ckpt_path = path
        if path is None:
            return
        ckpt = self.strategy.load_checkpoint(path, self.optimizers if stage == "fit" else [])
        module = self.module
        module.on_load_checkpoint(ckpt)
        self.strategy.load_module_state_dict(ckpt["state_dict"], strict=True, path=path)
        for cb in self.callbacks:
            cb.on_load_checkpoint(self, module, ckpt)
        if stage != "fit":
            self._say_loaded(path, ckpt, stage)
            return
        if "trainer_state" not in ckpt:
            raise CheckpointError(f"checkpoint {path!r} holds weights only (saved with weights_only=True); it cannot resume fit")
        opt_states = ckpt.get("optimizer_states", [])
        if len(opt_states) != len(self.optimizers):
            raise CheckpointError(f"checkpoint {path!r} has {len(opt_states)} optimizer states but configure_optimizers "
                                  f"returned {len(self.optimizers)} optimizers")
        for opt, st in zip(self.optimizers, opt_states):
            self.strategy.load_optimizer_state_dict(opt, st)
        sched_states = ckpt.get("lr_schedulers", [])
        if len(sched_states) != len(self.lr_scheduler_configs):
            raise CheckpointError(f"checkpoint {path!r} has {len(sched_states)} LR scheduler states but "
                                  f"configure_optimizers returned {len(self.lr_scheduler_configs)}")
        for config, st in zip(self.lr_scheduler_configs, sched_states):
            config.scheduler.load_state_dict(st)
        self.strategy.precision.load_state_dict(ckpt.get("precision", {}))
        self.state.load_state_dict(ckpt["trainer_state"])
        self.state.stage = "fit"
        self.state.should_stop = False
        if "epoch_schedulers_pending" in ckpt:
            self._step_pending_epoch_schedulers(ckpt["epoch_schedulers_pending"])
        # Loggers first: they bring back the run's version folder, which the default checkpoint folder follows.
        for lg, st in zip(self.loggers, ckpt.get("loggers", [])):
            lg.load_state_dict(st)
        for cb in self.checkpoint_callbacks:
            cb._resolve_dirpath(self)
        callback_states = ckpt.get("callbacks", {})
        for cb in self.callbacks:
            # the key it is saved under now, else the one surge 0.x used
            key = next((k for k in (cb.state_key, *cb._legacy_state_keys) if k in callback_states), None)
            if key is not None:
                cb.load_state_dict(callback_states[key])
        if self.datamodule is not None and "datamodule" in ckpt:
            self.datamodule.load_state_dict(ckpt["datamodule"])
        self._restore_rank_state(ckpt, path)
        if self.max_epochs not in (None, -1) and self.state.epoch > self.max_epochs:
            raise MisconfigurationError(
                f"You restored a checkpoint with current_epoch={self.state.epoch}, but you have set "
                f"Trainer(max_epochs={self.max_epochs}): {path} is past the end of this fit. Raise max_epochs to "
                f"train on, or use it with validate/test/predict")
        self._say_loaded(path, ckpt, "fit")

    def _restore_rank_state(self, ckpt: dict, path: str) -> None:
        """Put back this rank's own random state and data position (see :func:`surge.resume.own_rank_state`)."""
        try:
            own, notice = resume.own_rank_state(ckpt, self.global_rank, self.world_size)
        except ValueError as err:
            raise CheckpointError(f"checkpoint {path!r}: {err}") from None
        if notice:
            rank_zero_info(f"surge: {path} {notice}")
        if "data_position" in ckpt and self.state.batch_idx > 0:
            # Inside an epoch: the random state comes back once the epoch's order has been drawn again.
            position = dict(ckpt["data_position"])
            position.update({k: own[k] for k in ("loader_state", "sampler_state") if k in own})
            self._resume_position = {**position, "continue_state": own.get("rng")}
        elif "rng" in own:
            self._resume_rng = own["rng"]  # put back by the fit loop, once requesting the train loader drew its numbers

    def _say_loaded(self, path: str, ckpt: dict, stage: str) -> None:
        """One line on rank 0: which file, and at which step training continues (fit) or it was written."""
        if stage == "fit":
            s = self.state
            rank_zero_info(f"surge: resuming from {path} at global step {s.global_step} "
                           f"(epoch {s.epoch}, batch {s.batch_idx})")
        else:
            rank_zero_info(f"surge: {stage} with the weights of {path} (saved at global step "
                           f"{ckpt.get('global_step', '?')}, epoch {ckpt.get('epoch', '?')})")

    def _step_pending_epoch_schedulers(self, metrics: dict) -> None:
        """Take the epoch-interval scheduler step that an end-of-epoch checkpoint was written before."""
        if not self.module.automatic_optimization:
            return
        for config in self.lr_scheduler_configs:
            if config.interval != "epoch" or self.state.epoch % config.frequency:
                continue
            metric = None
            if config.monitor is not None:
                if config.monitor not in metrics:
                    rank_zero_warn(f"the LR scheduler monitors {config.monitor!r}, which the checkpoint did not record; "
                                   f"not stepping it for the epoch before the resume")
                    continue
                metric = torch.tensor(metrics[config.monitor])
            with warnings.catch_warnings():  # no optimizer.step() yet in this process, which torch would flag
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                self.module.lr_scheduler_step(config.scheduler, metric)
