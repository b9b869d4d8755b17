"""StochasticWeightAveraging: average the weights of the last epochs, anneal the LR with SWALR, redo BatchNorm.

From the start of epoch ``swa_start`` (0-based: ``swa_epoch_start - 1``, or ``int(swa_epoch_start * max_epochs)
- 1`` for a fraction) to the last epoch, each epoch's start folds the current weights into a running average.
The average so holds the weights as they were at the end of epochs ``swa_start - 1 .. max_epochs - 2`` (the
initial weights when ``swa_start`` is 0), as Lightning's does. ``torch.optim.swa_utils.SWALR`` replaces the
module's LR scheduler from ``swa_start`` on. When fit has run all its epochs, the average goes into the module;
a module with BatchNorm layers then gets its running statistics recomputed by one forward-only pass of
``training_step`` over the training data (momentum ``None``: the plain mean over batches, as ``update_bn``).

The average, how many weights it holds, and SWALR's state are saved in checkpoints: a resumed fit goes on
averaging where the interrupted one was.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import SWALR

from ..optim import SchedulerConfig
from ..results import Results
from ..utils import MisconfigurationError, rank_zero_info, rank_zero_warn
from .base import Callback

_AVG_FN = Callable[[Tensor, Tensor, Tensor], Tensor]


class StochasticWeightAveraging(Callback):
    """Stochastic Weight Averaging (Izmailov et al., 2018) over the last epochs of fit.

    Args:
        swa_lrs: SWALR's target learning rate: one float for every param group, or a list (one per group).
        swa_epoch_start: the epoch (1-based int >= 1) the averaging starts at, or a fraction in [0, 1] of
            ``max_epochs`` (``int(fraction * max_epochs)``).
        annealing_epochs: epochs SWALR takes to go from the current learning rate to ``swa_lrs``.
        annealing_strategy: ``"cos"`` or ``"linear"`` annealing.
        avg_fn: ``avg_fn(averaged, current, n_averaged) -> new averaged`` for each parameter; default: the
            equally weighted running mean.
        device: where the average is kept (default the CPU); ``None``: the module's device.

    Example::

        trainer = surge.Trainer(max_epochs=20, callbacks=[StochasticWeightAveraging(swa_lrs=1e-2)])
    """

    def __init__(self, swa_lrs: Union[float, list[float]], swa_epoch_start: Union[int, float] = 0.8,
                 annealing_epochs: int = 10, annealing_strategy: str = "cos", avg_fn: Optional[_AVG_FN] = None,
                 device: Optional[Union[torch.device, str]] = torch.device("cpu")) -> None:
        if isinstance(swa_epoch_start, bool) or not isinstance(swa_epoch_start, (int, float)) or (
                isinstance(swa_epoch_start, int) and swa_epoch_start < 1) or (
                isinstance(swa_epoch_start, float) and not 0 <= swa_epoch_start <= 1):
            raise MisconfigurationError("swa_epoch_start should be a >0 integer or a float between 0 and 1, "
                                        f"got {swa_epoch_start!r}")
        lrs = swa_lrs if isinstance(swa_lrs, list) else [swa_lrs]
        if not isinstance(swa_lrs, (float, list)) or not all(isinstance(lr, float) and lr > 0 for lr in lrs):
            raise MisconfigurationError("The `swa_lrs` should a positive float, or a list of positive floats; "
                                        f"got {swa_lrs!r}")
        if annealing_strategy not in ("cos", "linear"):
            raise MisconfigurationError(f"annealing_strategy must be 'cos' or 'linear', got {annealing_strategy!r}")
        if avg_fn is not None and not callable(avg_fn):
            raise MisconfigurationError("The `avg_fn` should be callable.")
        if device is not None and not isinstance(device, (torch.device, str)):
            raise MisconfigurationError(f"device is expected to be a torch.device or a str. Found {device}")
        self._swa_epoch_start = swa_epoch_start
        self._swa_lrs = swa_lrs
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = annealing_strategy
        self._avg_fn = avg_fn or self.avg_fn
        self._device = device
        self.n_averaged: Optional[Tensor] = None
        self._init_n_averaged = 0
        self._latest_update_epoch = -1
        self._average: Optional[dict[str, Tensor]] = None  # parameter name -> its average
        self._swa_scheduler: Optional[SWALR] = None
        self._scheduler_state: Optional[dict] = None  # from a checkpoint, until SWALR exists again
        self._scheduler_step_pending = False  # the checkpoint was written before its epoch's scheduler step
        self._max_epochs = -1
        self.momenta: dict[_BatchNorm, Optional[float]] = {}

    # ------------------------------------------------------------------ epochs, 0-based
    @property
    def swa_start(self) -> int:
        return max(int(self._swa_epoch_start) - 1, 0)

    @property
    def swa_end(self) -> Union[int, float]:
        return float("inf") if self._max_epochs == -1 else self._max_epochs - 1

    @staticmethod
    def pl_module_contains_batch_norm(pl_module: nn.Module) -> bool:
        return any(isinstance(m, _BatchNorm) for m in pl_module.modules())

    # ------------------------------------------------------------------ averaging
    @staticmethod
    def avg_fn(averaged_model_parameter: Tensor, model_parameter: Tensor, num_averaged: Tensor) -> Tensor:
        """The running mean: after n weights, the next one moves the average by 1/(n+1) of the difference."""
        return averaged_model_parameter + (model_parameter - averaged_model_parameter) / (num_averaged + 1)

    @staticmethod
    def update_parameters(average: dict[str, Tensor], model: nn.Module, n_averaged: Tensor, avg_fn: _AVG_FN) -> None:
        """Fold ``model``'s parameters into ``average`` (name -> tensor) and count them in ``n_averaged``."""
        for name, param in model.named_parameters():
            avg = average[name]
            current = param.detach().to(avg.device)
            avg.copy_(current if n_averaged == 0 else avg_fn(avg, current, n_averaged.to(avg.device)))
        n_averaged += 1

    @staticmethod
    def transfer_weights(average: dict[str, Tensor], dst_pl_module: nn.Module) -> None:
        """Copy the averaged parameters into the module (on the module's devices)."""
        with torch.no_grad():
            for name, param in dst_pl_module.named_parameters():
                param.copy_(average[name].to(param.device))

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer, module, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.strategy.name in ("fsdp", "pipeline", "model_parallel"):
            raise MisconfigurationError(f"SWA does not currently support sharded models (strategy={trainer.strategy.name!r})")
        if self._average is None:  # a checkpoint's average, loaded later, replaces these values
            self._average = {name: p.detach().clone() for name, p in module.named_parameters()}

    def on_fit_start(self, trainer, module) -> None:
        if len(trainer.optimizers) != 1:
            raise MisconfigurationError(f"SWA currently works with 1 `optimizer`, got {len(trainer.optimizers)}")
        if len(trainer.lr_scheduler_configs) > 1:
            raise MisconfigurationError("SWA currently not supported for more than 1 `lr_scheduler`.")
        self._max_epochs = trainer.max_epochs
        if isinstance(self._swa_epoch_start, float):
            if trainer.max_epochs == -1:
                raise MisconfigurationError("SWA with `swa_epoch_start` as a float is not supported when `max_epochs=-1`. "
                                            "Please provide `swa_epoch_start` as an integer.")
            self._swa_epoch_start = int(trainer.max_epochs * self._swa_epoch_start)
        if self._scheduler_state is not None:
            # A resume inside the averaging: SWALR comes back now, so the first epoch already runs at its rate.
            self._start_swalr(trainer, module)

    def on_load_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        """A checkpoint written while SWALR ran holds SWALR's state where the module's scheduler's would be:
        take it out (the Trainer would load it into the module's scheduler); SWALR gets it back when it is
        made again at the next epoch start."""
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if not state or state.get("scheduler_state") is None or trainer.state.fn != "fit":
            return
        checkpoint["lr_schedulers"] = []
        trainer.lr_scheduler_configs.clear()
        self._scheduler_step_pending = "epoch_schedulers_pending" in checkpoint

    def on_train_epoch_start(self, trainer, module) -> None:
        epoch = trainer.current_epoch
        if self._swa_scheduler is None and self.swa_start <= epoch <= self.swa_end:
            self._start_swalr(trainer, module)
        if self.swa_start <= epoch <= self.swa_end and epoch > self._latest_update_epoch:
            self.update_parameters(self._average, module, self.n_averaged, self._avg_fn)
            self._latest_update_epoch = epoch

    def _start_swalr(self, trainer, module) -> None:
        """Move the average where it is kept, and let SWALR drive the learning rate from here on."""
        device = self._device or module.device
        self._average = {name: t.to(device) for name, t in self._average.items()}
        optimizer = trainer.optimizers[0]
        if isinstance(self._swa_lrs, float):
            self._swa_lrs = [self._swa_lrs] * len(optimizer.param_groups)
        self._swa_scheduler = SWALR(optimizer, swa_lr=self._swa_lrs, anneal_epochs=self._annealing_epochs,
                                    anneal_strategy=self._annealing_strategy)
        if self._scheduler_state is not None:
            self._swa_scheduler.load_state_dict(self._scheduler_state)
            if self._scheduler_step_pending:  # the step the interrupted run took after its checkpoint
                with warnings.catch_warnings():  # no optimizer.step() yet in this process, which torch would flag
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                    self._swa_scheduler.step()
                self._scheduler_step_pending = False
        elif trainer.current_epoch != self.swa_start:
            rank_zero_warn("SWA is initializing after swa_start without any checkpoint data: the learning rate "
                           "schedule and the average differ from an uninterrupted run")
        config = SchedulerConfig(self._swa_scheduler)
        if trainer.lr_scheduler_configs:
            old = trainer.lr_scheduler_configs[0]
            if old.interval != "epoch" or old.frequency != 1:
                rank_zero_warn(f"SWA is currently only supported every epoch. Found {old}")
            rank_zero_info(f"Swapping scheduler `{type(old.scheduler).__name__}` for `SWALR`")
            trainer.lr_scheduler_configs[0] = config
        else:
            trainer.lr_scheduler_configs.append(config)
        if self.n_averaged is None:
            self.n_averaged = torch.tensor(self._init_n_averaged, dtype=torch.long, device=module.device)

    def on_train_end(self, trainer, module) -> None:
        # The average is the result only of a fit that ran all its epochs (or of one without an epoch limit).
        finished = self._max_epochs == -1 or trainer.current_epoch == self._max_epochs
        if not finished or self.n_averaged is None or int(self.n_averaged) == 0:
            return
        self.transfer_weights(self._average, module)
        if self.pl_module_contains_batch_norm(module):
            self.reset_batch_norm_and_save_state(module)
            try:
                self._forward_pass_for_batch_norm(trainer, module)
                if trainer.world_size > 1:
                    self._average_batch_norm_over_ranks(trainer, module)
            finally:
                self.reset_momenta()

    def _forward_pass_for_batch_norm(self, trainer, module) -> None:
        """Run ``training_step`` over the training data without gradients, so that every BatchNorm layer
        accumulates the mean and variance of its inputs under the averaged weights. What the step logs
        goes to a throwaway collection: this pass is not a training epoch."""
        kept = trainer._results
        trainer._results = Results("train", trainer.strategy)
        trainer._results.hook = "training_step"
        limit = trainer.num_training_batches
        was_training = module.training
        module.train()
        try:
            # The module itself, not a distributed wrapper: no collective per batch (ranks may hold different
            # numbers of batches), each process measures its own share of the data. Autocast as in training.
            with torch.no_grad(), trainer.strategy.precision.autocast():
                for batch_idx, batch in enumerate(trainer._train_loader):
                    if batch_idx >= limit:
                        break
                    batch = trainer._to_device(batch, 0)
                    trainer._results.new_batch(batch)
                    if trainer._training_step_takes_idx:
                        module.training_step(batch, batch_idx)
                    else:
                        module.training_step(batch)
        finally:
            module.train(was_training)
            trainer._results = kept

    @staticmethod
    def _average_batch_norm_over_ranks(trainer, module) -> None:
        """Each rank measured its own share of the data: make every rank's running statistics the mean over all
        ranks' batches (weighted by each rank's batch count), as one process reading every batch would get."""
        strategy = trainer.strategy
        for m in module.modules():
            if not (isinstance(m, _BatchNorm) and m.track_running_stats):
                continue
            n = m.num_batches_tracked.to(torch.float64)
            total = strategy.reduce(n.clone(), "sum")
            if float(total) == 0:
                continue
            for name in ("running_mean", "running_var"):
                buf = getattr(m, name)
                summed = strategy.reduce(buf.to(torch.float64) * n, "sum")
                buf.copy_((summed / total).to(buf.dtype))
            m.num_batches_tracked.copy_(total.to(m.num_batches_tracked.dtype))

    def reset_batch_norm_and_save_state(self, pl_module: nn.Module) -> None:
        """Zero the running means, set the variances to one, and use a cumulative mean (momentum None)."""
        self.momenta = {}
        for m in pl_module.modules():
            if isinstance(m, _BatchNorm) and m.track_running_stats:
                m.running_mean = torch.zeros_like(m.running_mean)
                m.running_var = torch.ones_like(m.running_var)
                m.num_batches_tracked *= 0
                self.momenta[m] = m.momentum
                m.momentum = None

    def reset_momenta(self) -> None:
        for m, momentum in self.momenta.items():
            m.momentum = momentum

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {
            "n_averaged": 0 if self.n_averaged is None else int(self.n_averaged),
            "latest_update_epoch": self._latest_update_epoch,
            "scheduler_state": None if self._swa_scheduler is None else self._swa_scheduler.state_dict(),
            "average_model_state": None if self._average is None else dict(self._average),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._init_n_averaged = state_dict["n_averaged"]
        self.n_averaged = None
        self._latest_update_epoch = state_dict["latest_update_epoch"]
        self._scheduler_state = state_dict["scheduler_state"]
        saved = state_dict.get("average_model_state")
        if saved is not None and self._average is not None:
            # A Lightning checkpoint holds the whole averaged module (buffers too): the parameters are what counts.
            self._average = {name: saved[name].detach().clone().to(t.device) for name, t in self._average.items()}
