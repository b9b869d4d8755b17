"""The batch-size search (:func:`scale_batch_size`): the largest batch size whose steps fit in memory, by
doubling (``"power"``) and then, optionally, bisection (``"binsearch"``). docs/tuner.md."""
from __future__ import annotations

import gc
from typing import Optional

import torch

from ..utils import MisconfigurationError, rank_zero_info, rank_zero_warn
from .trials import _Snapshot, _train_steps, _trial, get_hparam, set_hparam

# ---------------------------------------------------------------------------- the batch-size search
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "CUDNN_STATUS_NOT_SUPPORTED", "cuDNN error: CUDNN_STATUS_ALLOC")


def is_oom_error(err: BaseException) -> bool:
    """Whether ``err`` says that memory ran out (CUDA, cuDNN or the CPU allocator)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and len(err.args) == 1 and isinstance(err.args[0], str) and any(
        m in err.args[0] for m in _OOM_MESSAGES)


def _free_memory() -> None:
    gc.collect()  # (inside the search it looks only at objects made since the search began: see scale_batch_size)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _loader_kind(stage: str) -> str:
    return {"fit": "train", "validate": "val", "test": "test", "predict": "predict"}[stage]


def _dataset_length(trainer, stage: str) -> Optional[int]:
    """Samples in the stage's data (the largest of several loaders), None for iterable-style data."""
    from ..trainer_data import CombinedBatches

    loaders = [trainer.train_dataloader] if stage == "fit" else getattr(trainer, f"_{_loader_kind(stage)}_loaders") or []
    flat = []
    for ld in loaders:
        flat += ld.combined.flattened if isinstance(ld, CombinedBatches) else [ld]
    sizes = []
    for ld in flat:
        try:
            sizes.append(len(ld.dataset))
        except (AttributeError, TypeError):
            return None
    return max(sizes) if sizes else None


class _BatchTrials:
    """Runs one trial per batch size for :func:`scale_batch_size` on the stage that is starting."""

    def __init__(self, trainer, stage: str, steps: int, batch_arg_name: str) -> None:
        self.trainer, self.stage, self.steps, self.name = trainer, stage, steps, batch_arg_name

    def size(self) -> int:
        return get_hparam(self.trainer.module, self.name, self.trainer.datamodule)

    def set_size(self, value: int) -> None:
        set_hparam(self.trainer.module, self.name, value, self.trainer.datamodule)
        self.reload()

    def reload(self) -> None:
        """Forget the stage's loaders, so that they are requested again with the new size."""
        t = self.trainer
        if self.stage == "fit":
            t.train_dataloader = None
            t._val_loaders, t._val_shown = None, None
        else:
            setattr(t, f"_{_loader_kind(self.stage)}_loaders", None)

    def fits(self) -> bool:
        """Run ``steps`` steps at the current size: True if they ran, False if memory ran out."""
        t, snapshot = self.trainer, _Snapshot(self.trainer)
        _free_memory()
        try:
            if self.stage == "fit":
                with _trial(t, (), max_epochs=-1, max_steps=t.max_steps, limit_train_batches=1.0, _val_source=False):
                    _train_steps(t, self.steps)
            else:
                kind = _loader_kind(self.stage)
                settings = {f"limit_{kind}_batches": self.steps, "_verbose": False}
                if self.stage == "predict":
                    settings["_return_predictions"] = False
                with _trial(t, (), **settings):
                    if self.stage == "predict":
                        t._predict_loop()
                    else:
                        t._evaluate_stage(self.stage)
            return True
        except RuntimeError as err:
            if not is_oom_error(err):
                raise
            del err
            return False
        finally:
            snapshot.restore(t)
            _free_memory()

    def length(self) -> Optional[int]:
        """The data's length, with the loaders requested at the current size if they are not yet."""
        t = self.trainer
        if self.stage == "fit":
            t.train_dataloader is not None or t._setup_train_data()
        elif getattr(t, f"_{_loader_kind(self.stage)}_loaders") is None:
            t._loaders(_loader_kind(self.stage))
        return _dataset_length(t, self.stage)


def scale_batch_size(trainer, stage: str = "fit", mode: str = "power", steps_per_trial: int = 3, init_val: int = 2,
                     max_trials: int = 25, batch_arg_name: str = "batch_size", margin: float = 0.05,
                     max_val: int = 8192) -> Optional[int]:
    """Search the largest batch size that runs ``steps_per_trial`` steps of ``stage`` without running out of
    memory; set it on the module (or datamodule) and return it. See the module docstring."""
    if trainer.fast_dev_run:
        rank_zero_warn("Skipping batch size scaler since `fast_dev_run` is enabled.")
        return None
    if not 0.0 <= margin < 1.0:
        raise MisconfigurationError(f"scale_batch_size(margin=...) must be in [0, 1), got {margin!r}")
    trials = _BatchTrials(trainer, stage, steps_per_trial, batch_arg_name)
    # Each trial frees the memory of the one before with a full garbage collection, which in a large process
    # (torch, the user's program, the model) took 0.2 s on the 2-core test machine. Everything that exists before
    # the search waits in gc's permanent generation meanwhile, so a collection looks only at what the trials made
    # (refcounting still frees anything that stops being used). Not where the program froze objects itself:
    # unfreezing at the end would undo its own freeze.
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        return _search(trials, mode, init_val, max_trials, batch_arg_name, margin, max_val)
    finally:
        if freeze:
            gc.unfreeze()


def _search(trials: _BatchTrials, mode: str, init_val: int, max_trials: int, batch_arg_name: str, margin: float,
            max_val: int) -> int:
    size = min(init_val, max_val)
    trials.set_size(size)
    good, bad = None, None  # the largest size that ran, the smallest that did not
    for _ in range(max_trials):
        length = trials.length()
        if trials.fits():
            good = size
            if bad is None:  # still growing
                if length is not None and size >= length:
                    rank_zero_info(f"surge: batch size {size} holds the whole dataset ({length} samples); stopping")
                    break
                if size >= max_val:
                    rank_zero_info(f"surge: reached max_val={max_val}; stopping")
                    break
                nxt = min(size * 2, max_val)
            elif mode == "binsearch" and bad - good > 1:
                nxt = (good + bad) // 2
            else:
                break
        else:
            bad = size
            rank_zero_info(f"surge: batch size {size} ran out of memory")
            if mode == "power" and good is not None:
                break
            lower = good if good is not None else 0
            if bad - lower <= 1:
                break
            nxt = (lower + bad) // 2 if mode == "binsearch" or good is None else good
        rank_zero_info(f"surge: batch size {size} {'fits' if good == size else 'does not'}; trying {nxt}")
        size = nxt
        trials.set_size(size)
    if good is None:
        raise MisconfigurationError(f"scale_batch_size: even batch size {size} ran out of memory (started at "
                                    f"init_val={init_val})")
    if mode == "binsearch" and margin > 0:
        good = max(1, int(good * (1 - margin)))
    trials.set_size(good)
    rank_zero_info(f"surge: batch size finder chose {batch_arg_name}={good}")
    return good
