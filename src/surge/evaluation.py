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
        was_training = module.training
        module.eval()
        per_loader_keys = []
        with self.strategy.evaluation_context(self.inference_mode):
            self._call(f"on_{prefix}_start")
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
        module.train(was_training)
        if len(loaders) <= 1:
            return [{k: float(v) for k, v in epoch.items()}]
        # As in Lightning: a loader's dict holds what it logged, plus every key without a dataloader suffix
        # (logged with add_dataloader_idx=False by any loader, or from an epoch-end hook).
        return [{k: float(v) for k, v in epoch.items() if k in keys or "/dataloader_idx_" not in k}
                for keys in per_loader_keys]

    def _predict_loop(self):
        loaders = self._loaders("predict")
        module = self.module
        self._results = Results("predict", self.strategy)
        module.eval()
        all_outputs = []
        many = len(loaders) > 1
        _check_dataloader_idx(module, "predict", many)
        step_takes_idx = takes_batch_idx(module.predict_step)
        with self.strategy.evaluation_context(self.inference_mode):
            self._call("on_predict_start")
            self._call("on_predict_epoch_start")
            for dl_idx, loader in enumerate(loaders):
                outputs = []
                extra = (dl_idx,) if many else ()
                limit = self.num_predict_batches[dl_idx]
                for batch_idx, batch in enumerate(loader):
                    if batch_idx >= limit:
                        break
                    batch = self._to_device(batch, dl_idx)
                    self._call("on_predict_batch_start", batch, batch_idx, *extra)
                    self._results.hook = "predict_step"
                    out = self.strategy.step("predict", *((batch, batch_idx) if step_takes_idx else (batch,)), *extra)
                    self._call("on_predict_batch_end", out, batch, batch_idx, *extra)
                    if self._return_predictions:
                        outputs.append(out)
                all_outputs.append(self.strategy.gather_predictions(outputs, loader) if self._return_predictions else outputs)
            self._call("on_predict_epoch_end")
            self._call("on_predict_end")
        if not self._return_predictions:
            return None
        return all_outputs[0] if len(all_outputs) == 1 else all_outputs


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
