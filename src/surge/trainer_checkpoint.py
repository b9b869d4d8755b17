"""Saving a run to a checkpoint and restoring it, part of the Trainer."""
from __future__ import annotations

import os
import warnings
from typing import Optional

import torch

from . import resume
from .checkpoint import CheckpointError
from .utils import MisconfigurationError, rank_zero_warn


class CheckpointHandling:
    """Trainer methods that save and restore the whole run; mixed into :class:`surge.Trainer`."""

    def save_checkpoint(self, filepath: str, weights_only: bool = False) -> None:
        """Write a checkpoint of the run to ``filepath`` atomically (rank 0 writes; all ranks wait)."""
        checkpoint = self._checkpoint_dict(weights_only)
        self.strategy.save_checkpoint(checkpoint, filepath)
        self.strategy.barrier("save_checkpoint")

    def _checkpoint_dict(self, weights_only: bool = False) -> dict:
        from . import __version__
        from .checkpoint import FORMAT_KEY, FORMAT_VERSION
        from .seed import capture_rng_state

        module = self.module
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
            ckpt["rng"] = capture_rng_state()
            if not self._epoch_finished and self.state.batch_idx > 0:
                ckpt["data_position"] = resume.position(self.train_dataloader, self._tracker,
                                                        self._epoch_loader_state, self.state.batch_idx)
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
        if ckpt_path == "best":
            cb = self.checkpoint_callback
            if cb is None or not cb.best_model_path:
                raise MisconfigurationError(
                    'ckpt_path="best" but no best checkpoint exists yet'
                    + ("" if cb is not None else " (checkpointing is disabled)")
                    + "; run fit() with a ModelCheckpoint first, or pass a file path"
                )
            return cb.best_model_path
        if ckpt_path == "last":
            found = self._find_last_checkpoint()
            if found is None:
                if stage == "fit":
                    rank_zero_warn('ckpt_path="last" found no checkpoint; starting from scratch')
                    return None
                raise MisconfigurationError(f'ckpt_path="last" found no checkpoint under {self.default_root_dir!r}')
            return found
        if not isinstance(ckpt_path, (str, os.PathLike)):
            raise MisconfigurationError(f'ckpt_path must be "last", "best" or a file path, got {ckpt_path!r}')
        return os.fspath(ckpt_path)

    def _find_last_checkpoint(self) -> Optional[str]:
        candidates = []
        for cb in self.checkpoint_callbacks:
            if cb.last_model_path and os.path.exists(cb.last_model_path):  # a file, or a sharded folder
                candidates.append(cb.last_model_path)
            candidates.extend(cb.find_existing(self))
        for dirpath, _, files in os.walk(self.default_root_dir):
            if os.path.basename(dirpath) == "checkpoints":
                candidates.extend(os.path.join(dirpath, f) for f in files if f.endswith(".ckpt") and not f.startswith("."))
        candidates = [c for c in candidates if os.path.exists(c)]
        if not candidates:
            return None
        return max(candidates, key=lambda p: (os.path.getmtime(p), os.path.basename(p).startswith("last")))

    def _load_for_stage(self, stage: str, ckpt_path) -> None:
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
            if cb.state_key in callback_states:
                cb.load_state_dict(callback_states[cb.state_key])
        if self.datamodule is not None and "datamodule" in ckpt:
            self.datamodule.load_state_dict(ckpt["datamodule"])
        if "data_position" in ckpt and self.state.batch_idx > 0:
            # Inside an epoch: the random state comes back once the epoch's order has been drawn again.
            self._resume_position = {**ckpt["data_position"], "continue_state": ckpt.get("rng")}
        elif "rng" in ckpt:
            from .seed import restore_rng_state

            restore_rng_state(ckpt["rng"])

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
