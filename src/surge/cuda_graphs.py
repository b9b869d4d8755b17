"""``Trainer(cuda_graphs=True)``: replay the training forward and backward from a CUDA graph.

For small models the GPU finishes each kernel faster than Python can launch the next one; a CUDA graph
launches the whole forward (and, through autograd, the whole backward) in one call. surge uses
``torch.cuda.make_graphed_callables`` on the module's call (``self(x)`` in ``training_step``), captured on
the first training batch with that batch as the sample: the rest of the step (the loss if computed
outside ``forward``, ``self.log``, hooks, gradient clipping, the optimizer step — a fused kernel on
CUDA) stays eager and keeps working unchanged. Evaluation (``module.eval()``) runs the eager forward.

What it needs, checked with a clear error:
- a single CUDA device (not the CPU, not DDP/FSDP/pipeline: their hooks cannot live inside a graph);
- automatic optimisation, and ``accumulate_grad_batches=1`` (the graph's gradient buffers are reused
  by every replay, so gradients must not accumulate across batches);
- not together with ``compile=`` (use ``compile={"mode": "reduce-overhead"}``: inductor's own graphs);
- every training batch with the same shapes and dtypes (use ``drop_last=True``), passed to ``forward``
  as positional tensors.
The capture runs the forward and backward three times on the first batch before recording (torch's
warm-up): BatchNorm running statistics see that batch four extra times.

Written without a GPU in this session: the error paths are tested on the CPU, the GPU path is not yet
verified (tests/test_precision_gpu.py, benchmarks/cuda_graph.py).
"""
from __future__ import annotations

import torch

from .utils import MisconfigurationError, SurgeError


def check_cuda_graphs_args(strategy, compile_options, accumulate_grad_batches: int) -> None:
    """The construction-time checks of ``cuda_graphs=True``."""
    from .strategies.single import SingleDevice

    device = strategy.root_device
    if device.type != "cuda":
        raise MisconfigurationError(f"cuda_graphs=True needs a CUDA device, but this run is on {device.type}; "
                                    f"remove cuda_graphs or use accelerator='cuda'")
    if not isinstance(strategy, SingleDevice):
        raise MisconfigurationError(f"cuda_graphs=True works on one device only (strategy='single_device'), not with "
                                    f"{type(strategy).__name__}: its communication hooks cannot be captured")
    if compile_options is not None:
        raise MisconfigurationError("cuda_graphs=True and compile= both capture the step; use "
                                    "compile={'mode': 'reduce-overhead'} (torch.compile's own CUDA graphs) instead")
    if accumulate_grad_batches != 1:
        raise MisconfigurationError(f"cuda_graphs=True needs accumulate_grad_batches=1 (got {accumulate_grad_batches}): "
                                    f"the graph's gradient buffers are overwritten by every replay")


def _signature(args) -> tuple:
    return tuple((tuple(a.shape), a.dtype, a.device, a.requires_grad) for a in args)


class GraphedForward:
    """Stands in for ``module.forward``: eager outside training; in training, captured on the first call
    and replayed afterwards, with a clear error when a later call does not match the captured shapes."""

    def __init__(self, module: torch.nn.Module, capture=None) -> None:
        self.module = module
        self.eager = module.forward
        self.graphed = None
        self.key = None
        self._capture = capture or self._capture_cuda

    def __call__(self, *args, **kwargs):
        if not (self.module.training and torch.is_grad_enabled()):
            return self.eager(*args, **kwargs)
        if kwargs or not args or not all(isinstance(a, torch.Tensor) for a in args):
            raise SurgeError("cuda_graphs=True captures forward(*tensors): the forward was called with "
                             f"{'keyword arguments ' + str(sorted(kwargs)) if kwargs else 'non-tensor arguments'}; "
                             "pass tensors positionally, or turn cuda_graphs off")
        key = _signature(args)
        if self.graphed is None:
            self.graphed = self._capture(args)
            self.key = key
        elif key != self.key:
            raise SurgeError(
                f"cuda_graphs=True needs every training batch to have the same shapes and dtypes: the graph was "
                f"captured for {_describe(self.key)}, this batch gives {_describe(key)} (a smaller last batch? use "
                f"DataLoader(..., drop_last=True)); or turn cuda_graphs off for dynamic shapes")
        return self.graphed(*args)

    def _capture_cuda(self, args):
        module = self.module
        if not all(a.is_cuda for a in args):
            raise SurgeError("cuda_graphs=True: the forward's inputs are not on the GPU")
        module.forward = self.eager  # make_graphed_callables wraps the real forward, then replaces it
        try:
            torch.cuda.make_graphed_callables(module, tuple(args))
            graphed = module.forward
        except Exception as err:  # noqa: BLE001  (re-raised with what to change)
            raise SurgeError(f"cuda_graphs=True: the forward of {type(module).__name__} could not be captured in a "
                             f"CUDA graph ({type(err).__name__}: {err}). Graphs need static shapes, no host "
                             f"synchronisation (.item(), printing tensors) and no module hooks in forward; "
                             f"turn cuda_graphs off for this model") from err
        finally:
            module.forward = self
        return graphed


def _describe(key) -> str:
    return ", ".join(f"{list(shape)} {str(dtype).replace('torch.', '')}" for shape, dtype, _, _ in key)


def install_graphed_forward(module: torch.nn.Module, precision) -> None:
    """Put a :class:`GraphedForward` in as ``module.forward`` (once)."""
    if isinstance(module.__dict__.get("forward"), GraphedForward):
        return
    # make_graphed_callables refuses autocast's weight cache (its cached casts would outlive the capture).
    if hasattr(precision, "autocast_cache"):
        precision.autocast_cache = False
    module.forward = GraphedForward(module)
