"""Speed defaults on GPUs, and the opt-in speed-ups: ``compile=``, ``fuse_optimizers=``, ``allow_tf32=``,
``cuda_graphs=`` and the CUDA input prefetcher.

On the CPU nothing here changes what the user wrote: the optimizers, the matmul precision and the
dataloader stay as given (so a CPU run is bit-for-bit a plain PyTorch loop). On a CUDA device surge
turns on what a careful plain loop would: TF32 matmuls on Ampere and newer, fused Adam/AdamW/SGD kernels,
pinned memory and non-blocking copies with the next batch copied while the current one computes.
Each is announced in one line and can be switched off by its Trainer argument.

The Trainer calls :class:`SpeedSettings` at three points only: construction (checks the arguments),
after the strategy placed the module (TF32, compile, CUDA graphs) and after ``configure_optimizers``
(fused optimizers, checks that need the optimizers).
"""
from __future__ import annotations

from typing import Optional

import torch

from .utils import MisconfigurationError, rank_zero_info, rank_zero_warn

# Optimizers whose fused kernel computes exactly the update the loop-over-tensors code does.
_FUSABLE = ("Adam", "AdamW", "SGD")


class SpeedSettings:
    """The Trainer's speed arguments, checked at construction.

    Arguments:
        compile: False, True (``torch.compile`` defaults) or a dict of ``torch.compile`` keyword arguments.
        fuse_optimizers: on CUDA, switch Adam/AdamW/SGD created without ``fused=``/``foreach=`` to ``fused=True``.
        allow_tf32: None (on for CUDA devices of compute capability 8.0 and newer), True or False.
        cuda_graphs: replay the training forward+backward from a CUDA graph (small, static-shape models).
    """

    def __init__(self, *, compile=False, fuse_optimizers: bool = True, allow_tf32: Optional[bool] = None,
                 cuda_graphs: bool = False, strategy=None, accumulate_grad_batches: int = 1) -> None:
        from .compile import check_compile_arg

        self.compile_options = check_compile_arg(compile)
        if not isinstance(fuse_optimizers, bool):
            raise MisconfigurationError(f"fuse_optimizers must be True or False, got {fuse_optimizers!r}")
        if allow_tf32 not in (None, True, False):
            raise MisconfigurationError(f"allow_tf32 must be None (on for Ampere+ GPUs), True or False, got {allow_tf32!r}")
        if not isinstance(cuda_graphs, bool):
            raise MisconfigurationError(f"cuda_graphs must be True or False, got {cuda_graphs!r}")
        self.fuse_optimizers = fuse_optimizers
        self.allow_tf32 = allow_tf32
        self.cuda_graphs = cuda_graphs
        if cuda_graphs:
            from .cuda_graphs import check_cuda_graphs_args

            check_cuda_graphs_args(strategy, self.compile_options, accumulate_grad_batches)
        self._warned_workers = False

    # ------------------------------------------------------------------ after the strategy placed the module
    def setup_module(self, trainer) -> None:
        """TF32, then compile the module's forward or install the CUDA-graph forward (one of the two)."""
        strategy = trainer.strategy
        device = strategy.root_device
        self.apply_tf32(device)
        if self.compile_options is not None:
            strategy.compile_module(self.compile_options)
        if self.cuda_graphs:
            from .cuda_graphs import install_graphed_forward

            install_graphed_forward(strategy.module, strategy.precision)

    def apply_tf32(self, device: torch.device) -> None:
        if device.type != "cuda":
            if self.allow_tf32:
                rank_zero_warn(f"allow_tf32=True does nothing on {device.type}: TF32 is a CUDA matmul mode")
            return
        if self.allow_tf32 is False:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            return
        ampere = torch.cuda.get_device_capability(device)[0] >= 8
        if self.allow_tf32 is None and not ampere:
            return
        # "highest" is torch's default: anything else was the user's own choice, which stays.
        if torch.get_float32_matmul_precision() == "highest":
            torch.set_float32_matmul_precision("high")
            rank_zero_info("surge: TF32 matmuls on for float32 (10-bit mantissa inside matmuls, several times "
                           "faster); Trainer(allow_tf32=False) turns this off")

    # ------------------------------------------------------------------ after configure_optimizers
    def setup_optimizers(self, trainer) -> None:
        if self.cuda_graphs and not trainer.module.automatic_optimization:
            raise MisconfigurationError(
                "cuda_graphs=True needs automatic optimisation: with automatic_optimization = False the step "
                "(backward, optimizer calls) happens inside training_step, where surge cannot capture it")
        if not self.fuse_optimizers or trainer.strategy.root_device.type != "cuda":
            return
        fused = [type(opt).__name__ for opt in trainer.optimizers if fuse_optimizer(opt)]
        if fused:
            rank_zero_info(f"surge: using the fused CUDA kernels of {', '.join(sorted(set(fused)))} "
                           f"(one launch per step); Trainer(fuse_optimizers=False) keeps the optimizer as written")

    # ------------------------------------------------------------------ the training dataloader
    def wrap_train_loader(self, trainer, loader):
        """What the training loop iterates: on CUDA a prefetcher that copies the next batch while the
        current one computes; on the CPU the loader itself (no wrapper, no cost)."""
        device = trainer.strategy.root_device
        if device.type != "cuda":
            return loader
        from .prefetch import CUDAPrefetcher, transfer_hooks_overridden

        if not self._warned_workers and getattr(loader, "num_workers", None) == 0:
            self._warned_workers = True
            rank_zero_warn("the training DataLoader has num_workers=0 on a GPU run: the GPU waits while this process "
                           "loads every batch; pass DataLoader(..., num_workers=4) (or more) and persistent_workers=True")
        if transfer_hooks_overridden(trainer):
            # The user's transfer hooks expect the batch as the loader gives it: no early copy, the
            # copy is still non-blocking (Module.transfer_batch_to_device).
            return loader
        return CUDAPrefetcher(loader, device)


def fuse_optimizer(optimizer) -> bool:
    """Set ``fused=True`` on ``optimizer`` (before its first step) when it is a plain Adam, AdamW or SGD
    built without an explicit ``fused=`` or ``foreach=`` and every parameter is a floating CUDA tensor.
    Returns whether it did."""
    opt = getattr(optimizer, "optimizer", optimizer)
    if type(opt).__name__ not in _FUSABLE or type(opt).__module__.split(".")[:2] != ["torch", "optim"]:
        return False  # a subclass may override step(): leave it alone
    if opt.state:  # already stepped (or state loaded): its state layout is the unfused one
        return False
    defaults = opt.defaults
    if defaults.get("fused") is not None or defaults.get("foreach") is not None or defaults.get("differentiable"):
        return False  # the user chose
    for group in opt.param_groups:
        if group.get("fused") or group.get("foreach") is not None or group.get("differentiable"):
            return False
        for p in group["params"]:
            if p.device.type != "cuda" or not p.is_floating_point():
                return False
    defaults["fused"] = True
    for group in opt.param_groups:
        group["fused"] = True
    # What the constructor does for fused=True: GradScaler then hands the scale to the fused kernel.
    opt._step_supports_amp_scaling = True
    return True
