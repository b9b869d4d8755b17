"""The validation, test and predict loops (one epoch over each dataloader), part of the Trainer."""
from __future__ import annotations

from .module import takes_batch_idx, takes_dataloader_idx
from .results import Results

STAGE_PREFIX = {"validate": "validation", "sanity_check": "validation", "test": "test", "predict": "predict"}
LOADER_PREFIX = {"validation": "val", "test": "test", "predict": "predict"}  # val_dataloader, ...


class EvaluationLoops:
    """Trainer methods that run validation, test and prediction; mixed into :class:`surge.Trainer`."""

    def _evaluate_stage(self, stage: str) -> list[dict]:
        key = "val" if stage == "validate" else "test"
        loaders = self._loaders(key)
        counts = self.num_val_batches if stage == "validate" else self.num_test_batches
        per_loader = self._run_eval(stage, loaders, counts)
        if self._verbose and self.is_global_zero:
            _print_results(stage, per_loader)
        return per_loader

    def _run_eval(self, stage: str, loaders: list, limits: list, sanity: bool = False) -> list[dict]:
        """One epoch of validation or test over every loader; returns the epoch metrics per loader."""
        module, prefix = self.module, STAGE_PREFIX[stage]
        step_name = f"{prefix}_step"
        many = len(loaders) > 1
        _check_dataloader_idx(module, prefix, many)
        step_takes_idx = takes_batch_idx(getattr(module, step_name))  # validation_step(self, batch) works
        self._results = results = Results(stage, self.strategy)
        modes = _eval_mode(module, prefix)
        per_loader_keys = []
        with self.strategy.evaluation_context(self.inference_mode):
            self._call(f"on_{prefix}_start")
            if not sanity:  # a start hook (BatchSizeFinder) may have requested the loaders again
                loaders, limits = self._loaders_now(LOADER_PREFIX[prefix], loaders, limits)
                many = len(loaders) > 1
            self._call(f"on_{prefix}_epoch_start")
            for dl_idx, loader in enumerate(loaders):
                results.dataloader_idx = dl_idx if many else None
                before = _logged_names(results)
                extra = (dl_idx,) if many else ()  # dataloader_idx only with several loaders, as in Lightning
                limit = limits[dl_idx]
                for batch_idx, batch in enumerate(loader):
                    if batch_idx >= limit:
                        break
                    batch = self._to_device(batch, dl_idx)
                    results.new_batch(batch)
                    self._call(f"on_{prefix}_batch_start", batch, batch_idx, *extra)
                    results.hook = step_name
                    step_args = (batch, batch_idx) if step_takes_idx else (batch,)
                    output = self.strategy.step(prefix, *step_args, *extra)
                    self._call(f"on_{prefix}_batch_end", output, batch, batch_idx, *extra)
                    self._eval_step_metrics(results, write=not sanity)
                per_loader_keys.append(_logged_names(results) - before)
            results.dataloader_idx = None
            self._call(f"on_{prefix}_epoch_end")
            epoch = self._epoch_end(stage, log=not sanity)
            self._call(f"on_{prefix}_end")
        _train_mode(module, prefix, modes)
        if len(loaders) <= 1:
            return [{k: float(v) for k, v in epoch.items()}]
        # As in Lightning: a loader's dict holds what it logged, plus every key without a dataloader suffix
        # (logged with add_dataloader_idx=False by any loader, or from an epoch-end hook).
        return [{k: float(v) for k, v in epoch.items() if k in keys or "/dataloader_idx_" not in k}
                for keys in per_loader_keys]

    def _loaders_now(self, kind: str, loaders: list, limits: list) -> tuple[list, list]:
        """The stage's loaders and batch counts as they are now: ``loaders`` unless a hook requested new ones
        (or dropped them, to be requested again)."""
        if getattr(self, f"_{kind}_loaders") is None:
            self._loaders(kind)
        now = getattr(self, f"_{kind}_loaders")
        if now is loaders:
            return loaders, limits
        return now, getattr(self, f"num_{kind}_batches")

    def _predict_loop(self):
        loaders = self._loaders("predict")
        module = self.module
        self._results = Results("predict", self.strategy)
        module.on_predict_model_eval()
        many = len(loaders) > 1
        _check_dataloader_idx(module, "predict", many)
        step_takes_idx = takes_batch_idx(module.predict_step)
        # A BasePredictionWriter gets each batch's sample indices, and (writing per epoch) every prediction even
        # under return_predictions=False: here for it to read, as Lightning's predict loop holds them.
        on_batch, on_epoch = _writer_intervals(self.callbacks)
        keep = self._return_predictions or on_epoch
        self._predict_batch_indices = []
        self._predict_epoch_indices = [[] for _ in loaders]
        per_loader = []
        with self.strategy.evaluation_context(self.inference_mode):
            self._call("on_predict_start")
            loaders, _ = self._loaders_now("predict", loaders, self.num_predict_batches)
            self._call("on_predict_epoch_start")
            for dl_idx, given in enumerate(loaders):
                outputs = []
                extra = (dl_idx,) if many else ()
                limit = self.num_predict_batches[dl_idx]
                loader, seen = _recording_indices(given) if on_batch or on_epoch else (given, None)
                for batch_idx, batch in enumerate(loader):
                    if batch_idx >= limit:
                        break
                    if seen is not None:  # the sampler has given this batch's indices by now
                        self._predict_batch_indices = seen.batches[batch_idx]
                        if on_epoch:
                            self._predict_epoch_indices[dl_idx].append(seen.batches[batch_idx])
                    batch = self._to_device(batch, dl_idx)
                    self._call("on_predict_batch_start", batch, batch_idx, *extra)
                    self._results.hook = "predict_step"
                    out = self.strategy.step("predict", *((batch, batch_idx) if step_takes_idx else (batch,)), *extra)
                    self._call("on_predict_batch_end", out, batch, batch_idx, *extra)
                    if keep:
                        outputs.append(out)
                per_loader.append(outputs)
            self._predict_outputs = per_loader[0] if len(per_loader) == 1 else per_loader
            self._call("on_predict_epoch_end")
            self._predict_outputs, self._predict_epoch_indices = [], []
            self._call("on_predict_end")
            if not self._return_predictions:
                return None
            # Every rank's outputs in dataset order (under DDP), read off the loader as the strategy prepared it.
            returned = [self.strategy.gather_predictions(outputs, given) for outputs, given in zip(per_loader, loaders)]
        return returned[0] if len(returned) == 1 else returned


def _eval_mode(module, prefix: str) -> list:
    """Switch ``module`` to evaluation through its ``on_<stage>_model_eval`` hook (default: ``eval()``);
    returns every submodule's mode from before, for :func:`_train_mode`."""
    modes = [(m, m.training) for m in module.modules()]
    getattr(module, f"on_{prefix}_model_eval")()
    return modes


def _train_mode(module, prefix: str, modes: list) -> None:
    """After the loop: the module's own ``on_<stage>_model_train`` where it overrides it, else every
    submodule back in the mode it had (a frozen backbone kept in eval stays in eval)."""
    from .datamodule import _overrides
    from .module import Module

    if _overrides(module, f"on_{prefix}_model_train", Module):
        getattr(module, f"on_{prefix}_model_train")()
        return
    for m, training in modes:
        m.training = training


def _writer_intervals(callbacks) -> tuple[bool, bool]:
    """Whether a BasePredictionWriter among ``callbacks`` writes per batch, and whether one writes per epoch."""
    from .callbacks.prediction_writer import BasePredictionWriter

    writers = [cb for cb in callbacks if isinstance(cb, BasePredictionWriter)]
    return any(w.interval.on_batch for w in writers), any(w.interval.on_epoch for w in writers)


class _SeenBatches:
    """A DataLoader's batch sampler that keeps the indices of every batch it has given this epoch (the loader
    reads ahead of the loop with workers, so the loop looks a batch up by its index)."""

    def __init__(self, batch_sampler):
        self.batch_sampler = batch_sampler
        self.batches: list[list[int]] = []

    def __iter__(self):
        self.batches = []
        for indices in self.batch_sampler:
            indices = list(indices)
            self.batches.append(indices)
            yield indices

    def __len__(self) -> int:
        return len(self.batch_sampler)


def _recording_indices(loader):
    """``loader`` rebuilt to record its batches' sample indices, and the recorder; ``(loader, None)`` where the
    indices cannot be known (not a DataLoader, an IterableDataset, no batch sampler), with a warning."""
    from torch.utils.data import DataLoader, IterableDataset

    from .data import loader_settings
    from .utils import rank_zero_warn

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset) or loader.batch_sampler is None:
        rank_zero_warn(f"Couldn't infer the batch indices fetched from your dataloader: `{type(loader).__name__}` "
                       f"(a BasePredictionWriter gets empty batch_indices)")
        return loader, None
    seen = _SeenBatches(loader.batch_sampler)
    return DataLoader(loader.dataset, batch_sampler=seen, **loader_settings(loader, leave_out=("drop_last",))), seen


def _logged_names(results: Results) -> set:
    return {m.name for m in results.metrics.values()}


def _check_dataloader_idx(module, prefix: str, many: bool) -> None:
    """The step and batch hooks of a stage take ``dataloader_idx`` exactly when it has several loaders (Lightning
    raises the same way): a missing argument would otherwise fail deep inside the first step."""
    loader = LOADER_PREFIX[prefix]
    for name in (f"{prefix}_step", f"on_{prefix}_batch_start", f"on_{prefix}_batch_end"):
        hook = getattr(module, name, None)
        if hook is None:
            continue
        takes = takes_dataloader_idx(hook)
        where = f"{type(module).__name__}.{name}()"
        if many and takes is False:
            raise RuntimeError(f"You provided multiple `{loader}_dataloader`, but no `dataloader_idx` argument in "
                               f"`{where}`: with several loaders it is called with the loader's index. Try adding "
                               f"`dataloader_idx=0` to its signature.")
        if not many and takes is None:
            raise RuntimeError(f"You provided only a single `{loader}_dataloader`, but have included `dataloader_idx` "
                               f"in `{where}`, which surge passes only with several loaders. Either remove the "
                               f"argument or give it a default value i.e. `dataloader_idx=0`.")


def _print_results(stage: str, per_loader: list[dict]) -> None:
    rows = [(f"{k}" + (f" (dataloader {i})" if len(per_loader) > 1 else ""), v)
            for i, metrics in enumerate(per_loader) for k, v in sorted(metrics.items())]
    if not rows:
        return
    width = max(len(r[0]) for r in rows)
    title = f"{stage} metric"
    width = max(width, len(title))
    line = "-" * (width + 18)
    print(line)
    print(f"{title:<{width}}   value")
    print(line)
    for k, v in rows:
        print(f"{k:<{width}}   {v:.6g}")
    print(line, flush=True)
