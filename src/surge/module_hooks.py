"""The hooks a :class:`surge.Module` may override, with what each does when it is not overridden.

The Trainer calls each at its point of the loop (the order is in docs/hooks.md); a hook the module leaves as
it is costs nothing there: the Trainer looks up once per run which hooks a module overrides. The placeholders
that do nothing are one line each; the ones with a default behaviour (switching to ``eval()``, moving a batch,
backward, zeroing, stepping, clipping, stepping a scheduler) say what it is.
"""
from __future__ import annotations

import torch


class ModuleHooks:
    """Mixed into :class:`surge.Module`: every hook, and the overridable parts of the optimisation step."""

    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def configure_model(self) -> None: ...
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_validation_model_eval(self) -> None:
        """Called as validation starts (also the sanity check): switches the module to ``eval()``."""
        self.eval()

    def on_validation_model_train(self) -> None:
        """Called as validation ends, where overridden; otherwise every submodule gets back the mode it had."""
        self.train()

    def on_test_model_eval(self) -> None:
        """Called as testing starts: switches the module to ``eval()``."""
        self.eval()

    def on_test_model_train(self) -> None:
        """Called as testing ends, where overridden; otherwise every submodule gets back the mode it had."""
        self.train()

    def on_predict_model_eval(self) -> None:
        """Called as prediction starts: switches the module to ``eval()``."""
        self.eval()

    def on_train_batch_start(self, batch, batch_idx: int): ...
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None: ...
    def on_validation_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer) -> None: ...
    def on_before_zero_grad(self, optimizer) -> None: ...
    def on_save_checkpoint(self, checkpoint: dict) -> None: ...
    def on_load_checkpoint(self, checkpoint: dict) -> None: ...
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        return batch
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        return batch

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Move ``batch`` to ``device``: tensors inside dicts, lists, tuples, namedtuples and
        dataclasses are moved; anything with a ``.to(device)`` method is moved too."""
        from .data import move_to_device

        # Host-to-GPU copies need not block the host: the GPU's stream orders them before their use.
        return move_to_device(batch, device, non_blocking=torch.device(device).type == "cuda")

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        """Compute the gradients of ``loss`` (the step's loss, already scaled under ``"16-mixed"``); the
        arguments are those given to ``manual_backward``. Override to change how backward runs, e.g.
        ``loss.backward(retain_graph=True)``. The strategy's gradient synchronisation stays around it."""
        loss.backward(*args, **kwargs)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        """Step ``optimizer`` (automatic optimisation; called at the end of each accumulation window).

        Override to change when or how it steps: ``optimizer.step(closure=optimizer_closure)`` steps (through
        the precision's grad scaler, after gradient clipping); returning without it skips this step, and
        ``global_step`` then does not count it. The forward and backward have already run; the closure
        hands back their loss. Only a module that overrides this pays for it.

        Example (learning-rate warm-up)::

            def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure):
                optimizer.step(closure=optimizer_closure)
                if self.trainer.global_step < 500:
                    for group in optimizer.param_groups:
                        group["lr"] = min(1.0, (self.trainer.global_step + 1) / 500) * self.hparams.lr
        """
        optimizer.step(closure=optimizer_closure)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip gradients before each optimizer step (automatic optimisation), with the Trainer's
        ``gradient_clip_val`` / ``gradient_clip_algorithm`` as arguments. Override to clip differently, e.g.
        per optimizer; call ``self.clip_gradients(optimizer, value, algorithm)`` to clip."""
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """Step ``scheduler``; ``metric`` is the monitored value for ReduceLROnPlateau, else ``None``."""
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)
