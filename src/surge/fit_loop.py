"""The fit loop, part of the Trainer: epochs, batches, the optimizer steps, validation during fit.

Read ``_fit_loop`` -> ``_train_epoch`` -> ``_train_batch`` top to bottom: fetch a batch, forward and
backward through the strategy, step the optimizers, log, validate, checkpoint. The methods after
``_train_batch`` are its steps (zeroing, stepping and clipping, backward, the NaN check, schedulers). When
validation runs inside fit, and the sanity check before it, is in ``fit_validation.py``.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

from . import anomaly, resume
from .datamodule import _overrides
from .fit_step import _check_step_output, _detached_output, _OptimizerStep
from .fit_validation import ValidationInFit
from .module import Module, takes_batch_idx
from .precision import Precision
from .profiler import NO_PROFILE
from .results import Results
from .seed import restore_rng_state
from .strategies.strategy import _NOTHING, Strategy
from .utils import SurgeError, rank_zero_info, rank_zero_warn
from .warnings import PossibleUserWarning


# The hooks of every training batch that are skipped when nobody listens (FitLoop._quiet).
_BATCH_HOOKS = ("on_train_batch_start", "on_before_zero_grad", "on_before_backward", "on_after_backward",
                "on_before_optimizer_step")


class FitLoop(ValidationInFit):
    """Trainer methods that run ``fit``: epochs, batches, optimizer steps; mixed into :class:`surge.Trainer`."""

    def _fit_loop(self) -> None:
        # A new fit: current_epoch is the state's again, and no training batch is open.
        self._flush_due = self._epoch_cut_short = self._batch_open = False
        self._read_module_signatures()
        if self._ckpt_path is not None:
            self._continue_logger_history()
        self._log_hyperparams()
        self._call("on_fit_start")
        self._sanity_check()
        self._setup_train_data()  # after the sanity check, as Lightning requests it
        if self._resume_rng is not None:  # the checkpoint's random state, once requesting the data drew its own
            restore_rng_state(self._resume_rng)
            self._resume_rng = None
        if self.num_training_batches == 0:  # limit_train_batches=0 or an empty loader: nothing to train on
            return
        self._setup_val_data(at_fit_start=True)
        self._warn_if_fewer_batches_than_log_interval()
        # What on_train_start logs counts in the first epoch's values, as Lightning's users expect.
        self._results = Results("train", self.strategy)
        self._call("on_train_start")
        self._last_val_time = time.monotonic()
        self._run_epochs()
        self._results = Results("train", self.strategy)
        self._call("on_train_end")  # ModelCheckpoint saves the final state here if no save had it yet
        self._call("on_fit_end")
        if self._flush_due:
            self._flush_loggers()

    def _run_epochs(self) -> None:
        """Train epoch after epoch until fit is done (also the tuner's trials, with their own limits)."""
        state = self.state
        self._said_minimum_not_met = False
        while not self._fit_done():
            if state.batch_idx == 0 and self._setup_train_data():  # a reload due at this epoch's start
                self._warn_if_fewer_batches_than_log_interval()
            self._train_epoch()
            if self._epoch_finished:
                state.epoch += 1
                self._batches_of_last_epoch, state.batch_idx = state.batch_idx, 0
                self._epoch_finished = False
        # Fit ended inside an epoch (max_steps, a stop): from here on current_epoch counts that epoch as done, as
        # Lightning's does; the state keeps the position inside it, so a checkpoint still resumes at the next batch.
        self._epoch_cut_short = state.batch_idx > 0

    def _read_module_signatures(self) -> None:
        """What the module's own methods take and override, read once per fit so that no step inspects them."""
        module = self.module
        self._training_step_takes_idx = takes_batch_idx(module.training_step)  # training_step(self, batch) works
        self._own_optimizer_step = _overrides(module, "optimizer_step", Module)
        self._own_zero_grad = _overrides(module, "optimizer_zero_grad", Module)
        precision = self.strategy.precision
        self.strategy.direct_backward = type(precision).backward is Precision.backward and \
            not _overrides(module, "backward", Module)
        self._own_clipping = _overrides(module, "configure_gradient_clipping", Module)
        self._warned_none_loss = False

    def _warn_if_fewer_batches_than_log_interval(self) -> None:
        n, every = self.num_training_batches, self.log_every_n_steps
        if self.loggers and every and isinstance(n, int) and n < every and not self.fast_dev_run:
            rank_zero_warn(
                f"The number of training batches ({n}) is smaller than the logging interval "
                f"Trainer(log_every_n_steps={every}): the loggers get the per-step values (the training loss...) "
                f"only every {every} batches, counted across epochs. Set a lower value for log_every_n_steps if "
                f"you want to see logs for the training epoch.", PossibleUserWarning)

    def _fit_done(self) -> bool:
        s = self.state
        if self.max_epochs != -1 and s.epoch >= self.max_epochs:
            return True
        if self.max_steps != -1 and s.global_step >= self.max_steps:
            return True
        if s.should_stop:
            if self._can_stop_early():
                return True
            if not self._said_minimum_not_met:  # asked too early: should_stop stays set, fit goes on to the minimum
                self._said_minimum_not_met = True
                rank_zero_info(f"Trainer was signaled to stop but the required min_epochs={self.min_epochs} or "
                               f"min_steps={self.min_steps} has not been met. Training will continue...")
        return False

    def _can_stop_early(self) -> bool:
        """Whether ``should_stop`` may end fit now: ``min_epochs`` epochs done and ``min_steps`` steps taken.
        Checked at every batch end, so fit ends at the first one where both hold (inside an epoch, too)."""
        s = self.state
        return (self.min_epochs is None or s.epoch >= self.min_epochs) and \
            (self.min_steps is None or s.global_step >= self.min_steps)

    def _train_epoch(self) -> None:
        """One pass over the training data, with validation where ``val_check_interval`` says."""
        module, strategy, state = self.module, self.strategy, self.state
        results = self._results  # made before on_train_start, or at the end of the previous epoch
        limit = self.num_training_batches  # inf: a loader without a length, read until it ends
        self._set_train_epoch(state.epoch)
        module.train()
        self._call("on_train_epoch_start")
        skip, read_and_drop = self._position_epoch()
        batch_idx, exhausted, validated_at = -1, True, None
        batches = self._speed.wrap_train_loader(self, self._train_loader)  # CUDA: next batch copies during this step
        batch_end_listened = self._listened("on_train_batch_end")
        # The per-batch hooks nobody listens to are not called at all (their dispatch is most of what a step
        # costs in Python beyond the user's own code); nor the batch transfer where it changes nothing.
        self._quiet = quiet = frozenset(name for name in _BATCH_HOOKS if not self._listened(name))
        # Where nothing sits between the loop and torch (no profiler, hook, override or clipping), zeroing and
        # stepping call the optimizer itself, past the layers that would only pass the call on.
        self._automatic = automatic = module.automatic_optimization  # (a property: read once an epoch)
        plain = self.profiler is None and automatic
        self._direct_zero_grad = plain and "on_before_zero_grad" in quiet and not self._own_zero_grad
        self._direct_step = plain and "on_before_optimizer_step" in quiet and not self._own_optimizer_step \
            and not self._own_clipping
        # (and where neither the strategy nor the precision, a grad scaler, steps optimizers its own way, the step
        # is the optimizer's own)
        self._direct_optimizer = self._direct_step and type(strategy).optimizer_step is Strategy.optimizer_step \
            and type(strategy.precision).optimizer_step is Precision.optimizer_step
        to_device = self._transfer_needed()
        val_inside = self._val_checks_inside_epoch(limit)  # False: no batch of this epoch but the last can validate
        profiler, preemption = self.profiler, self._preemption
        for batch_idx, batch in enumerate(batches, start=0 if read_and_drop else skip):
            if batch_idx < skip:
                if batch_idx + 1 == skip:
                    restore_rng_state(self._resume_position.pop("continue_state"))
                continue
            if batch_idx >= limit:
                batch_idx -= 1
                break
            if to_device:
                batch = self._to_device(batch, 0)
            self._batch_open = True  # (trainer.fit_loop.total_batch_idx counts a batch from its start, as Lightning)
            results.new_batch(batch)
            if "on_train_batch_start" not in quiet and self._call("on_train_batch_start", batch, batch_idx) == -1:
                batch_idx -= 1
                break
            if profiler is None:
                output = self._train_batch(batch, batch_idx, last=batch_idx + 1 == limit)
            else:
                with profiler.profile("run_training_batch"):
                    output = self._train_batch(batch, batch_idx, last=batch_idx + 1 == limit)
            state.batch_idx = batch_idx + 1
            state.batches_seen += 1
            self._batch_open = False
            if batch_end_listened:
                self._update_step_metrics()  # on_train_batch_end (ModelCheckpoint, the bar) sees this step's values
                # What it sees holds no graph: the step's activations can be freed.
                if automatic:
                    output = _detached_output(output)
                self._call("on_train_batch_end", output, batch, batch_idx)
            del output  # a skipped step's graph (on_nan="skip") is freed before the next forward
            self._log_step_metrics()
            if self._flush_due:  # this step was checkpointed: its rows reach the disk right after the checkpoint
                self._flush_loggers()
            # A stop about to happen inside the epoch validates first (if this epoch validates), as Lightning does;
            # at the epoch's last batch the epoch-end validation below is that one.
            if (val_inside and self._val_due(batch_idx, limit, end_of_epoch=False)) or (
                    state.should_stop and batch_idx + 1 != limit and self._can_stop_early() and self._validates_now()):
                self._validation_in_fit()
                validated_at = batch_idx
                if self._flush_due:
                    self._flush_loggers()
            self._flush_due = False
            if state.global_step >= preemption.next_check and not self._grads_pending and not self._nan.dropped \
                    and preemption.due(self):
                self._preempt()
            if (state.should_stop and self._can_stop_early()) or (self.max_steps != -1 and state.global_step >= self.max_steps):
                exhausted = batch_idx + 1 >= limit
                break
        empty = batch_idx == -1 and skip == 0  # an iterable that yields nothing: the epoch ends, as it is
        exhausted = exhausted or empty
        if exhausted:
            if self._grads_pending:  # an epoch ending inside an accumulation window still steps
                self._optimizer_steps(batch_idx)
            if self._nan.mode == "skip":  # or, dropped by on_nan="skip", gives its random numbers back
                self._nan.window_end(len(self.optimizers))
            # From here on a checkpoint records "epoch done": a resume starts the next one.
            self._epoch_finished = True
            if self._val_due(batch_idx, limit, end_of_epoch=True) or (
                    state.should_stop and self._can_stop_early() and self._validates_now() and validated_at != batch_idx):
                self._validation_in_fit()  # (a stop asked in the last batch's own validation does not validate again)
        self._results = results
        self._epoch_end("train")
        self._results = Results("train", strategy)  # the next epoch's (its on_train_epoch_start logs there)
        if self._flush_due:  # an epoch-end checkpoint: the epoch's rows go to disk with it
            self._flush_loggers()
            self._flush_due = False
        if exhausted and not empty:  # an epoch that stepped no optimizer does not advance the schedule
            self._step_schedulers("epoch")

    def _preempt(self) -> None:
        """Save ``last.ckpt`` where ``fit(ckpt_path="last")`` finds it, then exit with the requeue code."""
        callback = self.checkpoint_callback
        folder = callback.dirpath if callback is not None and callback.dirpath else os.path.join(self.default_root_dir, "checkpoints")
        path = os.path.join(folder, "last.ckpt")
        self._flush_loggers()  # the history first: a kill may follow the save at once
        self.save_checkpoint(path)
        self.strategy.wait_for_checkpoint()  # on disk before the requeue: the job may be killed right after
        if callback is not None:
            callback.last_model_path = path
        received = self._preemption.received
        rank_zero_info(f"surge: got {received.name if received else 'a preemption signal on another rank'}; saved {path} "
                       f"at global step {self.global_step}; exiting with code {self._preemption.exit_code} for a requeue")
        self._preemption.requeue(self)
        raise SystemExit(self._preemption.exit_code)

    def _position_epoch(self) -> tuple[int, bool]:
        """Prepare the training loader for this epoch; return the batches to skip and whether they must be
        read and dropped (loaders surge cannot skip inside) rather than skipped in the sampler."""
        loader, skip = self._train_loader, self.state.batch_idx
        self._tracker = tracker = resume.install(loader)
        pos, self._resume_position = self._resume_position, None
        if pos is None or skip == 0:
            # Record how this epoch's iteration starts, for a checkpoint written inside it.
            self._epoch_loader_state = resume._capture(loader)
            return 0, False
        self._epoch_loader_state = pos["loader_state"]
        if pos["loader_state"] is not None:
            resume._restore(pos["loader_state"], loader)
        if tracker is not None and pos["sampler_state"] is not None and pos["batch_size"] == loader.batch_size:
            tracker.resume(skip * loader.batch_size, pos["sampler_state"], pos["continue_state"])
            return skip, False
        resume.warn_fallback(loader)
        self._resume_position = pos  # read back in the loop, after the skipped batches
        return skip, True

    def _train_batch(self, batch, batch_idx: int, last: bool) -> Any:
        """Forward, backward and (at the end of an accumulation window) the optimizer step for one batch."""
        module, strategy = self.module, self.strategy
        args = (batch, batch_idx) if self._training_step_takes_idx else (batch,)
        if not self._automatic:
            self._results.hook = "training_step"
            output = strategy.step("training", *args)
            _check_step_output(output, manual=True)
            return output
        boundary = last or (batch_idx + 1) % self.accumulate_grad_batches == 0
        nan = self._nan
        if nan.mode == "skip":  # a window it drops gives back its random numbers: note them at its start
            nan.window_start(first_micro_batch=batch_idx % self.accumulate_grad_batches == 0)
        outputs, stepped = [], False
        for opt_idx, optimizer in enumerate(self.optimizers):
            if opt_idx in nan.dropped:  # on_nan="skip" dropped this window: the rest of it is not computed
                outputs.append(None)
                continue
            extra = (opt_idx,) if self._step_takes_opt_idx else ()
            if self._step_takes_opt_idx:
                module.toggle_optimizer(optimizer)
            # Gradients are synchronised across processes only on the last micro-batch of a window.
            with _NOTHING if boundary else strategy.no_backward_sync(True):
                owns_backward = strategy.owns_backward  # a pipeline schedule runs backward inside its step
                if owns_backward:  # so its gradients are zeroed before the step, not after
                    self._zero_grad_at_window_start(opt_idx, optimizer, batch_idx)
                self._results.hook = "training_step"
                if self.profiler is None:
                    output = strategy.step("training", *args, *extra)
                else:
                    with self.profiler.profile("training_step"):
                        output = strategy.step("training", *args, *extra)
                loss = _check_step_output(output, manual=False, needs_grad=not owns_backward)
                if loss is None and not self._warned_none_loss:
                    self._warned_none_loss = True
                    rank_zero_warn("`training_step` returned `None`: this batch has no backward; its optimizer "
                                   "step changes no weights (no gradients) but still counts in global_step. "
                                   "Return the loss to train on it; if skipping was on purpose, ignore this warning")
                # A None loss, as in Lightning, has no backward but joins the window: its optimizer step still runs
                # and counts in global_step (with every gradient zeroed to None it changes no weight).
                if loss is None or self._check_finite(loss, batch_idx, opt_idx):  # False: on_nan="skip" dropped it
                    if not owns_backward:
                        self._zero_grad_at_window_start(opt_idx, optimizer, batch_idx)
                    if loss is not None:
                        quiet = self._quiet
                        self._results.hook = "on_before_backward"  # (a module's own backward may log under it)
                        if "on_before_backward" not in quiet:
                            self._call("on_before_backward", loss)
                        if not owns_backward:
                            self._backward(loss / self.accumulate_grad_batches if self.accumulate_grad_batches > 1
                                           else loss)
                        if "on_after_backward" not in quiet:
                            self._call("on_after_backward")
                        # fp16's grad scaler skips steps with inf gradients by design: not an anomaly there.
                        if self.detect_anomaly and self.precision != "16-mixed":
                            anomaly.check_gradients(module, self.state, batch_idx)
                    self._grads_pending.add(opt_idx)
            if self._step_takes_opt_idx:
                module.untoggle_optimizer(optimizer)
            # Each optimizer steps in its own turn, so the next optimizer's training_step sees the update
            # (a GAN's discriminator loss uses the generator just stepped).
            if boundary and opt_idx in self._grads_pending:
                stepped = self._step_optimizer(opt_idx, batch_idx, loss) or stepped
            outputs.append(output)
            if not self._step_takes_opt_idx:
                break
        if boundary and nan.mode == "skip":
            nan.window_end(len(self.optimizers))
        if stepped:
            self._end_step()
        return outputs[0] if len(outputs) == 1 else outputs

    def _zero_grad_at_window_start(self, opt_idx: int, optimizer, batch_idx: int) -> None:
        """Zero ``optimizer``'s gradients before the first backward of an accumulation window (as Lightning
        does: gradients stay readable after the step, in on_train_batch_end and after fit)."""
        if opt_idx in self._grads_pending:
            return
        if self._direct_zero_grad:  # what the module's optimizer_zero_grad does, without the call to it
            optimizer.zero_grad(set_to_none=True)
            return
        if "on_before_zero_grad" not in self._quiet:
            self._call("on_before_zero_grad", optimizer)
        self.module.optimizer_zero_grad(self.state.epoch, batch_idx, optimizer)

    def _optimizer_steps(self, batch_idx: int) -> None:
        """Step every optimizer that holds gradients (an epoch ending inside a window), then count the step."""
        stepped = False
        for opt_idx in sorted(self._grads_pending):
            stepped = self._step_optimizer(opt_idx, batch_idx) or stepped
        if stepped:
            self._end_step()

    def _step_optimizer(self, opt_idx: int, batch_idx: int, loss=None) -> bool:
        """Clip and step one optimizer (its gradients are zeroed before the next window's first backward).
        A module's own ``optimizer_step`` decides whether it steps; returns whether it did."""
        optimizer = self.optimizers[opt_idx]
        if self._direct_step and not self.gradient_clip_val:  # nothing to do before the step, nothing of the module's
            if self._direct_optimizer:
                optimizer.step()
            else:
                self.strategy.optimizer_step(optimizer)
            stepped = True
        elif self.profiler is None:
            stepped = self._step_optimizer_now(optimizer, batch_idx, loss)
        else:
            with self.profiler.profile("optimizer_step"):
                stepped = self._step_optimizer_now(optimizer, batch_idx, loss)
        self._grads_pending.discard(opt_idx)
        return stepped

    def _step_optimizer_now(self, optimizer, batch_idx: int, loss) -> bool:
        if self._own_optimizer_step:
            handle = _OptimizerStep(self, optimizer, loss)
            self._results.hook = "optimizer_step"
            self.module.optimizer_step(self.state.epoch, batch_idx, handle, handle.closure)
            return handle.stepped
        self._before_optimizer_step(optimizer)
        self.strategy.optimizer_step(optimizer)
        return True

    def _end_step(self) -> None:
        """One optimisation step is done (every optimizer had its turn): count it, step per-step schedulers."""
        self.state.global_step += 1
        if self.lr_scheduler_configs:
            self._step_schedulers("step")

    def _before_optimizer_step(self, optimizer) -> None:
        if "on_before_optimizer_step" not in self._quiet:
            self._call("on_before_optimizer_step", optimizer)
        if self._own_clipping and self.module.automatic_optimization:
            self._results.hook = "configure_gradient_clipping"
            self.module.configure_gradient_clipping(optimizer, gradient_clip_val=self.gradient_clip_val,
                                                    gradient_clip_algorithm=self.gradient_clip_algorithm)
        elif self.gradient_clip_val:
            self._clip_gradients(optimizer, self.gradient_clip_val, self.gradient_clip_algorithm)

    def _clip_gradients(self, optimizer, value, algorithm) -> None:
        if value:
            self.strategy.clip_gradients(getattr(optimizer, "optimizer", optimizer), value, algorithm)

    def _backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        if self.profiler is None and not self.detect_anomaly:
            self.strategy.backward(loss, *args, **kwargs)
            return
        with NO_PROFILE if self.profiler is None else self.profiler.profile("backward"):
            if self.detect_anomaly:
                with torch.autograd.detect_anomaly(), anomaly.report_backward_anomaly(self.state):
                    self.strategy.backward(loss, *args, **kwargs)
            else:
                self.strategy.backward(loss, *args, **kwargs)

    def _check_finite(self, loss: torch.Tensor, batch_idx: int, opt_idx: int = 0) -> bool:
        """``True``: the step goes on. A non-finite loss raises, or under ``on_nan="skip"`` returns ``False``."""
        if self._nan.mode == "skip":
            return self._nan.finite_or_skip(self, loss, batch_idx, opt_idx)
        # On the CPU reading the loss costs nothing; on a GPU it would stall the pipeline every step,
        # so there the first bad step is recorded on the device and read when metrics are written.
        if loss.is_cpu or self.detect_anomaly:  # detect_anomaly: say so now, sync or not
            value = loss.item()  # ~1 us on a CPU scalar; torch.isfinite would cost 20x that
            if not math.isfinite(value):
                raise SurgeError(f"the loss is {value} at global step {self.state.global_step} "
                                 f"(epoch {self.state.epoch}, batch {batch_idx}); Trainer(on_nan='skip') skips such steps")
            return True
        bad = ~torch.isfinite(loss.detach())
        step = torch.tensor(self.state.global_step, device=loss.device)
        if self._nonfinite_step is None:
            self._nonfinite_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        self._nonfinite_step = torch.where(bad & (self._nonfinite_step < 0), step, self._nonfinite_step)
        return True

    def _raise_if_nonfinite(self) -> None:
        if self._nonfinite_step is not None:
            step = int(self._nonfinite_step)
            if step >= 0:
                raise SurgeError(f"the loss became non-finite (NaN or inf) at global step {step} (epoch {self.state.epoch})")

    def _step_schedulers(self, interval: str) -> None:
        if not self.lr_scheduler_configs or not self.module.automatic_optimization:
            return
        for config in self.lr_scheduler_configs:
            if config.interval != interval:
                continue
            count = self.state.global_step if interval == "step" else self.state.epoch + 1
            if count % config.frequency:
                continue
            metric = None
            if config.monitor is not None:
                metric = self.callback_metrics.get(config.monitor)
                if metric is None:
                    if config.strict:
                        raise SurgeError(
                            f"the LR scheduler monitors {config.monitor!r} but no such metric was logged; logged: "
                            f"{sorted(self.callback_metrics)}"
                        )
                    rank_zero_warn(f"the LR scheduler monitors {config.monitor!r}, which was not logged; not stepping it")
                    continue
            self._results.hook = "lr_scheduler_step"
            self.module.lr_scheduler_step(config.scheduler, metric)
