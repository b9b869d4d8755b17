"""How a run fails: clear errors for faults the Trainer can recognise, and faults it can survive.

* A loss that is NaN or inf: ``Trainer(on_nan="raise")`` stops with the step and batch index;
  ``on_nan="skip"`` drops that step's accumulation window as if it had never been seen, and counts it
  (:class:`NanPolicy`).
* Out of memory: the error names the stage, hook, step, batch size and memory in use, and says
  what to try (:func:`explain_oom`).
* A callback that raises: the error carries the callback's name (:func:`name_the_callback`).
* A logger that fails (its folder removed, a full disk, a server gone): one warning, and the run goes
  on without it (:class:`LoggerGuard`).

Everything here is off the hot path: it runs only when something already went wrong.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch

from .seed import capture_rng_state, restore_rng_state
from .utils import MisconfigurationError, SurgeError

NAN_POLICIES = ("raise", "skip")


class OutOfMemoryError(SurgeError, torch.OutOfMemoryError):
    """Out of device memory, with where it happened; still a ``torch.OutOfMemoryError`` for ``except`` clauses."""


# ---------------------------------------------------------------------- non-finite losses
class NanPolicy:
    """What a non-finite loss does: ``"raise"`` (stop, naming step and batch) or ``"skip"`` the update.

    ``"skip"`` drops the whole accumulation window the bad loss is in (every micro-batch of it, the first
    included): no optimizer step, ``global_step`` counts only the windows taken, the micro-batches after
    the bad one are not computed, and the random streams (torch CPU and CUDA, Python, NumPy) go back to
    where they were before the window's first ``training_step``. The run then continues as a run that
    never saw that window would. (Randomness spent *loading* those batches is not given back: they
    were read.) With several optimizers each drops its own window, and the random streams are given
    back only when all of them dropped it.

    Skipping needs the loss's value now, so on a GPU ``"skip"`` costs one host-device sync per step;
    under several processes it also costs one small all-reduce per step, because every rank must skip
    the same steps (a rank that skipped its backward would leave the others waiting in DDP's all-reduce).
    Keeping the random state to give back costs 50-70 us per window on a 2-core CPU (NumPy's is most of it).
    """

    def __init__(self, mode: str) -> None:
        if mode not in NAN_POLICIES:
            raise MisconfigurationError(f"on_nan must be one of {', '.join(map(repr, NAN_POLICIES))}, got {mode!r}")
        self.mode = mode
        self.skipped = 0
        self.dropped: set[int] = set()  # optimizers whose current window was dropped
        self._window_rng: Optional[dict] = None  # the random state before the current window's first step

    def window_start(self, first_micro_batch: bool) -> None:
        """Before a batch's training steps: at a window's first micro-batch, remember the random state."""
        if first_micro_batch or self._window_rng is None:
            self.dropped.clear()
            self._window_rng = capture_rng_state()

    def window_end(self, optimizers: int) -> None:
        """A window ended (stepped or dropped). One that every optimizer dropped gives back the random
        numbers its training steps drew, so the next window draws what it would have without it."""
        if self.dropped and len(self.dropped) == optimizers and self._window_rng is not None:
            restore_rng_state(self._window_rng)
        self.dropped.clear()
        self._window_rng = None

    def finite_or_skip(self, trainer, loss: torch.Tensor, batch_idx: int, opt_idx: int) -> bool:
        """``True`` when the step goes on; ``False`` when its window was dropped (its grads zeroed)."""
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return True
        self.skipped += 1
        self.dropped.add(opt_idx)  # the fit loop computes no more of this window for this optimizer
        optimizer = trainer.optimizers[opt_idx]
        # Drop what this window accumulated so far: the next window starts from clean gradients.
        optimizer.zero_grad(set_to_none=True)
        trainer._grads_pending.discard(opt_idx)
        trainer._results.log("train/nan_skipped", float(self.skipped), prog_bar=False, logger=True, on_step=True,
                             on_epoch=False, reduce_fx="max", enable_graph=False, sync_dist=False,
                             add_dataloader_idx=False, batch_size=1, rank_zero_only=False)
        if self.skipped == 1 or math.log2(self.skipped).is_integer():
            warnings.warn(f"surge: the loss is not finite at global step {trainer.global_step} (epoch "
                          f"{trainer.current_epoch}, batch {batch_idx}); skipped this update "
                          f"({self.skipped} skipped so far, logged as train/nan_skipped)", stacklevel=2)
        return False


# ---------------------------------------------------------------------- out of memory
def _memory_in_use(device: Optional[torch.device]) -> str:
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        gib = 1024 ** 3
        free, total = torch.cuda.mem_get_info(device)
        return (f"{torch.cuda.memory_allocated(device) / gib:.2f} GiB allocated by tensors, "
                f"{torch.cuda.memory_reserved(device) / gib:.2f} GiB reserved by PyTorch, "
                f"{free / gib:.2f} of {total / gib:.2f} GiB free on {device}")
    return f"(no CUDA memory statistics on {device})"


def explain_oom(err: BaseException, trainer) -> Optional[OutOfMemoryError]:
    """For a ``torch.OutOfMemoryError`` raised inside a run: the same error, saying where and what to try."""
    if not isinstance(err, torch.OutOfMemoryError) or isinstance(err, OutOfMemoryError):
        return None
    state, results = trainer.state, trainer._results
    hook = results.hook if results is not None else "?"
    batch_size = results.batch_size if results is not None else "?"
    device = getattr(trainer.strategy, "root_device", None)
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else "CUDA out of memory"
    return OutOfMemoryError(
        f"out of memory in stage {state.stage!r}, {hook}, at global step {state.global_step} (epoch {state.epoch}, "
        f"batch {state.batch_idx}) with a batch of {batch_size}; memory in use: {_memory_in_use(device)}. "
        f"To fit: lower the batch size and raise Trainer(accumulate_grad_batches=...) to keep the effective "
        f"batch, use Trainer(precision='bf16-mixed') (or '16-mixed'), or shard the model with "
        f"strategy='fsdp'. (torch said: {first_line})"
    )


# ---------------------------------------------------------------------- callbacks
def name_the_callback(err: BaseException, callbacks) -> None:
    """Add a note naming the callback whose method raised ``err`` (when one did, and no note says so yet).

    The Trainer calls callbacks from several places; walking the traceback finds the callback
    frame wherever it was called from.
    """
    if not hasattr(err, "add_note") or any("raised by callback" in n for n in getattr(err, "__notes__", ())):
        return
    ids = {id(cb) for cb in callbacks}
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if owner is not None and id(owner) in ids:
            err.add_note(f"(raised by callback {type(owner).__name__}.{frame.f_code.co_name})")
            return
        tb = tb.tb_next


# ---------------------------------------------------------------------- loggers
class LoggerGuard:
    """Calls logger methods so that a failing logger warns once and the run goes on without it.

    A run of days must not die because a metrics folder was removed or a tracking server went away;
    the checkpoints, not the logs, are what a run cannot lose.
    """

    def __init__(self) -> None:
        self.failed: dict[int, str] = {}  # id(logger) -> the first error

    def call(self, logger, method: str, *args: Any, **kwargs: Any) -> None:
        if id(logger) in self.failed:
            return
        try:
            getattr(logger, method)(*args, **kwargs)
        except Exception as err:  # any failure of a logger: it is not worth the run
            self.failed[id(logger)] = f"{type(err).__name__}: {err}"
            warnings.warn(f"surge: logger {type(logger).__name__}.{method} failed ({type(err).__name__}: {err}); "
                          f"training continues and this logger writes nothing more in this run", stacklevel=2)
