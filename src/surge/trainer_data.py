"""Each stage's dataloaders, requested when Lightning requests them, and batches moved to the device; part of the Trainer.

When fit asks for its data (``reload_dataloaders_every_n_epochs=n`` adds the reloads):

- the val loaders first when a sanity check is set (``num_sanity_val_steps``), inside it;
- then the train loaders, after the sanity check (or earlier, when ``configure_optimizers`` reads
  ``trainer.estimated_stepping_batches``); again at the start of every n-th epoch;
- without a sanity check, the val loaders right after the train loaders when the first epoch validates,
  else before the first validation; again before a validation n or more epochs after the last request.

Several train loaders (a list or dict, nested, or a :class:`~surge.combined_loader.CombinedLoader`) are read
together, ``"max_size_cycle"`` unless the CombinedLoader says otherwise: ``training_step`` gets a list or dict
batch. Several val / test / predict loaders are read one after the other, each with its ``dataloader_idx``.

``trainer.train_dataloader``, ``val_dataloaders``, ``test_dataloaders``, ``predict_dataloaders`` show the
loaders as given (each as the run reads it: with a distributed sampler under DDP): the loader itself, or the
list / dict of them; ``None`` before they are requested. The loops read the flat lists kept beside them.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable

import torch
from torch.utils.data import SequentialSampler

from . import trainer_args as targs
from .combined_loader import CombinedLoader
from .data import num_batches, rebuild_dataloader
from .datamodule import DataModule, _overrides
from .precision import Precision
from .utils import MisconfigurationError, rank_zero_info, rank_zero_warn
from .warnings import PossibleUserWarning

_INF = float("inf")
_SHOWN = {"train": "_train_shown", "val": "_val_shown", "test": "_test_shown", "predict": "_predict_shown"}


class CombinedBatches:
    """What a loop iterates for loaders read together: each step's batch (a list or dict, as the loaders
    were given), without the ``batch_idx`` and ``dataloader_idx`` the CombinedLoader also yields."""

    def __init__(self, combined: CombinedLoader) -> None:
        self.combined = combined

    def __iter__(self):
        return (batch for batch, _, _ in self.combined)

    def __len__(self) -> int:
        return len(self.combined)

    @property
    def dataset(self) -> CombinedLoader:  # what a resume's read-and-drop notice names
        return self.combined


class DataHandling:
    """Trainer methods for dataloaders and batch transfer; mixed into :class:`surge.Trainer`."""

    # ------------------------------------------------------------------ the loaders as Lightning shows them
    @property
    def train_dataloader(self):
        """fit's training dataloader, or the list / dict of them; ``None`` before fit requests it."""
        return getattr(self, "_train_shown", None)

    @train_dataloader.setter
    def train_dataloader(self, loader) -> None:
        self._train_loader = loader
        self._train_shown = loader.combined.iterables if isinstance(loader, CombinedBatches) else loader

    @property
    def val_dataloaders(self):
        """The validation dataloader (of fit, or of the last ``validate``), or the list / dict of them; ``None``
        when there is none (no ``validation_step``, ``limit_val_batches=0``) or before it is requested."""
        return getattr(self, "_val_shown", None)

    @val_dataloaders.setter
    def val_dataloaders(self, loaders) -> None:
        self._set_eval_loaders("val", loaders)

    @property
    def test_dataloaders(self):
        """The test dataloader of the last ``test``, or the list / dict of them (``None`` before)."""
        return getattr(self, "_test_shown", None)

    @test_dataloaders.setter
    def test_dataloaders(self, loaders) -> None:
        self._set_eval_loaders("test", loaders)

    @property
    def predict_dataloaders(self):
        """The dataloader of the last ``predict``, or the list / dict of them (``None`` before)."""
        return getattr(self, "_predict_shown", None)

    @predict_dataloaders.setter
    def predict_dataloaders(self, loaders) -> None:
        self._set_eval_loaders("predict", loaders)

    def _set_eval_loaders(self, kind: str, loaders) -> None:
        if loaders is getattr(self, f"_{kind}_loaders", None):
            return  # what _loaders() just made: shown as given already
        setattr(self, f"_{kind}_loaders", loaders)
        shown = None if not loaders else loaders[0] if len(loaders) == 1 else list(loaders)
        setattr(self, _SHOWN[kind], shown)

    # ------------------------------------------------------------------ fit: when each loader is requested
    def _prepare_fit_data(self) -> None:
        """At fit's start: forget an earlier fit's loaders and decide whether this fit validates (a
        ``validation_step``, val data, ``limit_val_batches != 0``), warning where step and data do not pair."""
        self.train_dataloader = None
        self._val_loaders, self._val_shown = None, None
        self.num_training_batches, self.num_val_batches = _INF, []
        self._train_requested_at = self._val_requested_at = -_INF
        self._resume_rng = None  # a checkpoint's random state, put back by the fit loop once fit has its data
        module, dm = self.module, self.datamodule
        has_step = callable(getattr(module, "validation_step", None))
        if self._given_loaders["val"] is not None:
            has_data = True
        elif dm is not None:
            has_data = _overrides(dm, "val_dataloader", DataModule)
        else:
            has_data = callable(getattr(module, "val_dataloader", None))
        if has_data and not has_step:
            rank_zero_warn(f"You passed in a `val_dataloader` but have no `validation_step`. Skipping val loop: "
                           f"define {type(module).__name__}.validation_step to validate during fit.")
        elif has_step and not has_data:
            rank_zero_warn(f"You defined a `validation_step` but have no `val_dataloader`. Skipping val loop: pass "
                           f"val_dataloaders to fit() or define val_dataloader() to validate during fit.",
                           PossibleUserWarning)
        self._val_source = has_step and has_data and self.limit_val_batches != 0

    @property
    def _validates_in_fit(self) -> bool:
        """Whether this fit validates: it has the step and the data, and (once requested) a loader with batches."""
        if not getattr(self, "_val_source", False):
            return False
        return self._val_loaders is None or any(n != 0 for n in self.num_val_batches)

    def _validates_on_epoch(self, epoch: int) -> bool:
        every = self.check_val_every_n_epoch
        return every is None or (epoch + 1) % every == 0

    def _reload_due(self, requested_at: float) -> bool:
        n = self.reload_dataloaders_every_n_epochs
        return bool(n) and self.state.epoch - requested_at >= n

    def _setup_train_data(self) -> bool:
        """Request the training loaders the first time fit needs them and again when a reload is due (at an
        epoch's start); set ``num_training_batches`` (``inf``: no length). No request with ``limit_train_batches=0``.
        Returns whether it requested them now."""
        if getattr(self, "_train_loader", None) is not None and not self._reload_due(self._train_requested_at):
            return False
        if self.limit_train_batches == 0:
            self.num_training_batches = 0
            return False
        loader, count = self._train_loaders()
        self.train_dataloader = loader
        self.num_training_batches = count
        if count == 0:
            return True
        n, epoch = self.reload_dataloaders_every_n_epochs, self.state.epoch
        # On the grid of n: a run resumed at epoch 3 with n=2 reloads at 4, as the uninterrupted run did.
        self._train_requested_at = epoch - epoch % n if n else epoch
        targs.check_val_check_fits(self.val_check_interval, count if count != _INF else None,
                                   self.check_val_every_n_epoch, validates=self._val_source)
        return True

    def _ensure_train_data(self) -> None:
        """``estimated_stepping_batches`` read during fit before the train loaders were requested: request them now."""
        if self.state.stage == "fit" and getattr(self, "_train_loader", None) is None and self.module is not None:
            rank_zero_info("surge: requesting the train dataloader now, to estimate the number of stepping batches")
            self._setup_train_data()

    def _setup_val_data(self, at_fit_start: bool = False) -> None:
        """Request fit's val loaders: for the sanity check; at fit's start (``at_fit_start``) when the first
        epoch validates and they were not requested yet; before a validation, the first time or when a
        reload is due."""
        if not self._val_source:
            return
        loaded = self._val_loaders is not None
        if at_fit_start:
            if loaded or not self._validates_on_epoch(self.state.epoch):
                return
        elif loaded and not self._reload_due(self._val_requested_at):
            return
        # A sanity check before an epoch that does not validate does not count as that epoch's request.
        if self.state.stage != "sanity_check" or self._validates_on_epoch(self.state.epoch):
            self._val_requested_at = self.state.epoch
        self._loaders("val")

    def _set_train_epoch(self, epoch: int) -> None:
        """Tell each training loader's sampler the epoch (a DistributedSampler shuffles by it)."""
        loader = self._train_loader
        inner = loader.combined.flattened if isinstance(loader, CombinedBatches) else [loader]
        for ld in inner:
            sampler = getattr(ld, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)

    # ------------------------------------------------------------------ requesting and preparing loaders
    def _request(self, kind: str):
        """What the user gives for ``kind``: the stage's argument, else the datamodule's or the module's
        ``{kind}_dataloader()`` (called now); and its name for messages. ``None`` when val is not defined."""
        given = self._given_loaders.get(kind)
        if given is not None:
            return given, f"the {kind}_dataloaders argument"
        holder = self.datamodule if self.datamodule is not None else self.module
        fn_name = f"{kind}_dataloader"
        fn = getattr(holder, fn_name, None)
        if fn is None or (holder is self.datamodule and not _overrides(holder, fn_name, DataModule)):
            if kind == "train":
                raise MisconfigurationError(
                    "fit() has no training data: pass train_dataloaders, a datamodule with train_dataloader(), "
                    "or define train_dataloader() on the module")
            if kind in ("test", "predict"):
                raise MisconfigurationError(f"trainer.{kind}() has no data: pass dataloaders or a datamodule with "
                                            f"{fn_name}()")
            return None, fn_name
        results = self._results
        hook, results.hook = results.hook, fn_name  # self.log inside it is attributed to it
        try:
            return fn(), f"{type(holder).__name__}.{fn_name}()"
        finally:
            results.hook = hook

    def _prepared(self, combined: CombinedLoader, kind: str, source: str) -> None:
        """Check each loader in ``combined`` and put this process's version of it in (a distributed sampler;
        an unshuffled one for ``overfit_batches``)."""
        loaders = []
        overfit = self.overfit_batches > 0 and (kind == "train" or (kind == "val" and self.state.fn == "fit"))
        if overfit and not all(isinstance(getattr(ld, "sampler", SequentialSampler([])), SequentialSampler)
                               for ld in combined.flattened):
            rank_zero_warn(f"You requested to overfit but enabled {kind} dataloader shuffling. We are turning off the "
                           f"{kind} dataloader shuffling for you (overfit_batches reads the same first batches every "
                           f"epoch).")
        for loader in combined.flattened:
            if not isinstance(loader, Iterable):
                raise MisconfigurationError(f"{source} gave a {type(loader).__name__}, which is not iterable; "
                                            f"expected a DataLoader")
            if overfit and isinstance(loader, torch.utils.data.DataLoader) and \
                    not isinstance(loader.sampler, SequentialSampler):
                loader = rebuild_dataloader(loader, shuffle=False)
            loader = self.strategy.process_dataloader(loader, kind)
            self._check_workers(loader, f"{kind}_dataloader")
            loaders.append(loader)
        combined.flattened = loaders

    def _train_loaders(self):
        """fit's training loader (a DataLoader as given, or a CombinedBatches over several) and its batches per epoch."""
        given, source = self._request("train")
        several = isinstance(given, (CombinedLoader, list, tuple, dict))
        combined = given if isinstance(given, CombinedLoader) else CombinedLoader(given, "max_size_cycle")
        if combined.mode == "sequential":
            raise MisconfigurationError(
                "fit() cannot train on CombinedLoader(mode='sequential') (that mode gives one loader's batch per "
                "step, for evaluation); train with mode 'max_size_cycle', 'max_size' or 'min_size'")
        self._prepared(combined, "train", source)
        counts = [self._count(ld, "train") for ld in combined.flattened]
        if not several:
            loader, count = combined.flattened[0], counts[0]
        else:
            combined.limits = counts
            loader, count = CombinedBatches(combined), _combined_length(combined)
        if count == 0:
            name = "CombinedLoader" if several else type(loader).__name__
            rank_zero_warn(f"Total length of `{name}` across ranks is zero: {source} has no batches, so fit "
                           f"trains nothing")
        return loader, count

    def _loaders(self, kind: str) -> list:
        """The loaders an evaluation stage ("val", "test", "predict") reads one after the other, with their batch
        counts set; shown as given in ``trainer.{kind}_dataloaders``. A CombinedLoader of a mode other than
        "sequential" is one loader giving combined batches."""
        given, source = self._request(kind)
        if given is None:  # val without a val_dataloader()
            loaders, shown = [], None
        else:
            combined = given if isinstance(given, CombinedLoader) else CombinedLoader(given, "sequential")
            self._prepared(combined, kind, source)
            loaders = combined.flattened if combined.mode == "sequential" else [CombinedBatches(combined)]
            shown = combined.iterables
        setattr(self, f"_{kind}_loaders", loaders)
        setattr(self, _SHOWN[kind], shown)
        self._set_counts(kind, loaders)
        return loaders

    def _set_counts(self, kind: str, loaders: list) -> None:
        counts = [self._count(ld, kind) for ld in loaders]
        for ld, n in zip(loaders, counts):
            if n == 0 and getattr(self, f"limit_{kind}_batches") != 0:
                rank_zero_warn(f"Total length of `{type(ld).__name__}` across ranks is zero: the {kind} dataloader has "
                               f"no batches, so the {kind} loop reads nothing from it")
        setattr(self, f"num_{kind}_batches", counts)

    def _count(self, loader, kind: str):
        """Batches of ``loader`` one epoch of ``kind`` reads under its ``limit_*_batches`` (``inf``: no length)."""
        limit_name = f"limit_{kind}_batches"
        return num_batches(loader, getattr(self, limit_name), limit_name)

    def _check_workers(self, loader, name: str) -> None:
        """Lightning's warnings about a DataLoader's worker processes (PossibleUserWarning)."""
        if not isinstance(loader, torch.utils.data.DataLoader):
            return
        cpus = _cpus_available()
        devices = max(1, self.num_devices)
        upper = max(1, cpus // devices - 1)  # one core left for the main process
        workers = loader.num_workers
        context = loader.multiprocessing_context
        method = context.get_start_method() if context is not None else \
            multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
        if workers > 0 and method == "spawn" and not loader.persistent_workers:
            rank_zero_warn(f"'{name}' starts its {workers} worker processes with 'spawn' at every epoch, which is slow: "
                           f"consider setting `persistent_workers=True` in its DataLoader", PossibleUserWarning)
        elif workers < 2 and upper > 1:
            rank_zero_warn(f"The '{name}' does not have many workers which may be a bottleneck: it has num_workers="
                           f"{workers}, and {cpus} CPUs for {devices} device(s) allow `num_workers={upper}` in the "
                           f"`DataLoader` (one core left for the main process)", PossibleUserWarning)
        if loader.persistent_workers and loader.pin_memory and self.reload_dataloaders_every_n_epochs > 0:
            rank_zero_warn(f"'{name}' has pin_memory=True and persistent_workers=True while Trainer("
                           f"reload_dataloaders_every_n_epochs > 0) rebuilds it: PyTorch can be unstable with the three "
                           f"together (pytorch/pytorch#91252); set pin_memory=False", PossibleUserWarning)

    # ------------------------------------------------------------------ batches
    def _transfer_needed(self) -> bool:
        """Whether ``_to_device`` can change a batch: False on the CPU with no transfer hook and a precision that
        keeps the inputs' dtype (the training loop then skips the call)."""
        precision = self.strategy.precision
        return not (self._transfer_is_noop and precision.param_dtype is None
                    and type(precision).convert_input is Precision.convert_input)

    def _to_device(self, batch, dataloader_idx: int):
        module = self.module
        # "64-true", "bf16-true", "16-true": floating inputs take the parameters' dtype (a no-op otherwise).
        convert = self.strategy.precision.convert_input
        if self._transfer_is_noop:
            return convert(batch)
        dm = self.datamodule
        if dm is not None:
            batch = dm.on_before_batch_transfer(batch, dataloader_idx)
        batch = module.on_before_batch_transfer(batch, dataloader_idx)
        batch = self.strategy.batch_to_device(batch, module, dataloader_idx)
        if dm is not None:
            batch = dm.on_after_batch_transfer(batch, dataloader_idx)
        return convert(module.on_after_batch_transfer(batch, dataloader_idx))


def _combined_length(combined: CombinedLoader):
    try:
        return len(combined)
    except TypeError:  # an iterable without len() decides the length
        return _INF


def _cpus_available() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1

