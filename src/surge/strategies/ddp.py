"""Distributed data parallel: one process per device, each with a full copy of the model.

Every process runs the same training step on its own share of the data (a ``DistributedSampler``);
torch's ``DistributedDataParallel`` averages the gradients during backward, so every copy takes the
same optimizer step. How the processes start is in :mod:`surge.launch`.
"""
from __future__ import annotations

import atexit
import os
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..launch import ClusterEnvironment, LocalLauncher, attempt_store, detect_environment, watch_parent
from ..utils import MisconfigurationError, rank_zero_only, rank_zero_warn
from .collectives import NamedCollectives
from ..precision import Precision
from .strategy import _NOTHING, _STEP_HOOKS, Strategy, register

_EXIT_BARRIER_TIMEOUT = timedelta(seconds=30)
# What a failing collective inside the training step or backward is called in the error (see collectives.py).
_STEP = ("the training step (DDP's forward, which broadcasts buffers from rank 0, or a collective in training_step)",
         False)
_BACKWARD = ("the gradient synchronisation in backward", True)
_START_TIMEOUT = timedelta(minutes=2)
_OPS = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


class _StepRouter(torch.nn.Module):
    """What DDP wraps: its forward runs the module's ``<stage>_step``.

    DDP prepares its gradient reduction in its own ``forward``; the user's ``training_step`` calls
    ``self(x)`` on the unwrapped module, so the step itself has to go through DDP's forward.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module  # registered: DDP finds the parameters through it
        # The same module as a plain attribute, read at every step without nn.Module's __getattr__.
        self.__dict__["_target"] = module

    def forward(self, stage: str, *args):
        return getattr(self._target, _STEP_HOOKS[stage])(*args)


class _DDPStepRouter(_StepRouter):
    """The router DDP wraps. DDP registers no module hooks on it (its gradient hooks sit on the parameters),
    nor can a user reach it, so calling it goes straight to ``forward``, past nn.Module's hook dispatch."""

    __call__ = _StepRouter.forward


@register("ddp")
class DDP(NamedCollectives, Strategy):
    """Data parallel training over ``devices`` processes per machine on ``num_nodes`` machines.

    Example::

        trainer = surge.Trainer(strategy="ddp", accelerator="cpu", devices=2)
        trainer = surge.Trainer(strategy=DDP(find_unused_parameters=True, timeout=timedelta(minutes=5)), devices=4)

    Arguments:
        find_unused_parameters: let DDP cope with parameters that get no gradient in a step (slower).
        static_graph: promise that the set of used parameters is the same every step (lets DDP optimise).
        gradient_as_bucket_view: gradients are views into DDP's communication buckets (saves memory).
        timeout: how long a collective waits for the other processes before failing the run.
        process_group_backend: "gloo" or "nccl" (default: nccl on CUDA, gloo otherwise).
    """

    name = "ddp"
    manual_optimization_unsupported = (
        "DDP prepares its gradient all-reduce when its forward returns, and training_step, where "
        "manual_backward runs, is inside that forward, so the gradients would never be synchronised")

    def __init__(self, find_unused_parameters: bool = False, static_graph: bool = False,
                 gradient_as_bucket_view: bool = False, timeout: timedelta = timedelta(minutes=30),
                 process_group_backend: Optional[str] = None) -> None:
        super().__init__()
        if not isinstance(timeout, timedelta):
            raise MisconfigurationError(f"DDP(timeout=...) must be a datetime.timedelta, got {timeout!r}")
        if process_group_backend not in (None, "gloo", "nccl", "mpi", "ucc"):
            raise MisconfigurationError(f"DDP(process_group_backend={process_group_backend!r}): choose 'gloo' or 'nccl'")
        self.ddp_kwargs = dict(find_unused_parameters=find_unused_parameters, static_graph=static_graph,
                               gradient_as_bucket_view=gradient_as_bucket_view)
        self.timeout = timeout
        self.process_group_backend = process_group_backend
        self.cluster: Optional[ClusterEnvironment] = None
        self._launcher: Optional[LocalLauncher] = None
        self._owns_group = False
        self._failed = False  # set when this rank raised: then exit without the closing barrier
        self._op_names: list[tuple[str, bool]] = []  # (what, named by a caller) of the collectives running now
        self.final_batch_out = False  # set by the uneven-data loader: gradients must synchronise from now on

    # ------------------------------------------------------------------ processes
    @property
    def world_size(self) -> int:
        return self.cluster.world_size if self.cluster else 1

    @property
    def global_rank(self) -> int:
        return self.cluster.global_rank if self.cluster else 0

    @property
    def local_rank(self) -> int:
        return self.cluster.local_rank if self.cluster else 0

    @property
    def node_rank(self) -> int:
        return self.cluster.node_rank if self.cluster else 0

    def configure(self, accelerator, device_ids, num_nodes, precision) -> None:
        # The ranks must be known before the device is picked (cuda:<local rank>).
        self.cluster = detect_environment(len(device_ids), num_nodes)
        rank_zero_only.rank = self.cluster.global_rank
        super().configure(accelerator, device_ids, num_nodes, precision)

    def launch(self, fn, *args, **kwargs):
        """Start the other local ranks (once, on a plain ``python train.py``), then run ``fn`` here."""
        if self._launcher is None and not self.cluster.creates_processes_externally and len(self.device_ids) > 1:
            self._launcher = LocalLauncher(self.cluster, len(self.device_ids), cpu=self.root_device.type == "cpu")
            self._launcher.start()
        preemption = getattr(getattr(fn, "__self__", None), "_preemption", None)
        if self._launcher is not None:  # ranks leaving after a preemption save agreed by all are no failure
            self._launcher.leaving_code = lambda: preemption.exit_code if getattr(preemption, "acted", False) else None
        try:
            return fn(*args, **kwargs)
        except BaseException as err:
            if isinstance(err, SystemExit) and getattr(preemption, "acted", False):
                # Every rank leaves here together after an agreed preemption save: they meet and close the group
                # now, before the launcher waits for its children, so that gloo cannot abort a rank (exit -6) whose
                # peer tore its connections down first.
                self._destroy_group()
            else:
                self._failed = True
            if self._launcher is not None:  # the other ranks would wait for this one in their next collective
                self._launcher.stop(err)
            raise

    def setup_environment(self) -> None:
        super().setup_environment()
        watch_parent()
        if not dist.is_available():
            raise MisconfigurationError("strategy='ddp' needs torch.distributed, which this PyTorch build lacks")
        if dist.is_initialized():  # the user's script (or an earlier stage) created it
            return
        c = self.cluster
        os.environ.setdefault("MASTER_ADDR", c.main_address)
        if c.main_port is not None:
            os.environ["MASTER_PORT"] = str(c.main_port)
        if "MASTER_PORT" not in os.environ:
            raise MisconfigurationError("strategy='ddp' needs MASTER_PORT in the environment (the launcher sets it)")
        backend = self.process_group_backend or ("nccl" if self.root_device.type == "cuda" else "gloo")
        kwargs = {"device_id": self.root_device} if backend == "nccl" else {}
        # Starting takes as long as the slowest rank's imports (seconds on a loaded machine, more after a
        # torchrun restart): the rendezvous and the first connections get at least _START_TIMEOUT, and the
        # collectives then run under the user's timeout. (A rank that dies while starting is reported by
        # the launcher or torchrun, which stop the others.)
        set_timeout = getattr(dist.distributed_c10d, "_set_pg_timeout", None)
        start_timeout = max(self.timeout, _START_TIMEOUT) if set_timeout is not None else self.timeout
        store = attempt_store(c, start_timeout)
        where = {"store": store} if store is not None else {"init_method": "env://"}
        try:
            dist.init_process_group(backend, rank=c.global_rank, world_size=c.world_size, timeout=start_timeout,
                                    **where, **kwargs)
        except dist.DistNetworkError as err:
            if "EADDRINUSE" not in str(err) and "already in use" not in str(err):
                raise
            raise MisconfigurationError(
                f"MASTER_PORT={os.environ['MASTER_PORT']} is already in use on this machine (another run, or a "
                f"leftover process of one), so rank {c.global_rank} cannot host the rendezvous there: pick another "
                f"port, or unset MASTER_PORT and surge picks a free one"
            ) from err
        if start_timeout != self.timeout:
            set_timeout(self.timeout)
        self._owns_group = True
        # Destroyed when the process ends, not per stage: fit() then test() share one group, and
        # re-creating it would need a fresh rendezvous port.
        atexit.register(self._destroy_group)

    def _destroy_group(self) -> None:
        if self._owns_group and dist.is_initialized() and not self._failed:
            # gloo aborts a process ("terminate called without an active exception") now and then when a
            # peer tears its connections down first; meeting at a barrier before destroying avoids it.
            # After a failure the peers may never arrive, so then the OS cleans up instead.
            try:
                if dist.get_backend() == "gloo":
                    dist.monitored_barrier(timeout=_EXIT_BARRIER_TIMEOUT)
                dist.destroy_process_group()
            except Exception:  # a peer already gone: nothing left to shut down cleanly
                pass
        self._owns_group = False

    def setup_module(self, module: torch.nn.Module) -> None:
        super().setup_module(module)
        if not any(p.requires_grad for p in module.parameters()):
            return  # nothing to synchronise (evaluation of a frozen model): DDP would refuse it anyway
        device_ids = [self.root_device.index] if self.root_device.type == "cuda" else None
        self.model = DistributedDataParallel(_DDPStepRouter(module), device_ids=device_ids, **self.ddp_kwargs)

    # ------------------------------------------------------------------ the step
    def step(self, stage: str, *args) -> Any:
        if stage == "training" and isinstance(self.model, DistributedDataParallel):
            if self.precision.param_dtype is None and type(self.precision).autocast is Precision.autocast:
                return self._guarded(_STEP, self.model, stage, *args)  # 32-true: no autocast context to enter
            with self.precision.autocast():
                return self._guarded(_STEP, self.model, stage, *args)
        # Evaluation needs no gradient hooks: call the module directly.
        return super().step(stage, *args)

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        if self.direct_backward:
            self._guarded(_BACKWARD, loss.backward, *args, **kwargs)
        else:
            self._guarded(_BACKWARD, self.precision.backward, loss, *args, module=self.module, **kwargs)

    def no_backward_sync(self, active: bool):
        # The uneven-data loader handed out the epoch's last batch, maybe inside an accumulation window:
        # synchronise anyway, or the epoch-end optimizer step would use each rank's own gradients.
        if active and not self.final_batch_out and isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return _NOTHING

    # ------------------------------------------------------------------ collectives
    def _collective_device(self) -> torch.device:
        return self.root_device if dist.get_backend() == "nccl" else torch.device("cpu")

    def barrier(self, name: str = "") -> None:
        if dist.is_initialized():
            with self._op(f"the barrier {name!r}" if name else "a barrier"):
                if dist.get_backend() == "nccl":
                    dist.barrier(device_ids=[self.root_device.index])
                else:
                    dist.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not dist.is_initialized():
            return obj
        box = [obj]
        with self._op(f"a broadcast from rank {src}"):
            dist.broadcast_object_list(box, src=src, device=self._collective_device())
        return box[0]

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if not dist.is_initialized():
            return tensor.unsqueeze(0)
        tensor = tensor.contiguous()
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        with self._op("an all_gather"):
            dist.all_gather(out, tensor)
        return torch.stack(out)

    def all_gather_object(self, obj: Any) -> list:
        if not dist.is_initialized():
            return [obj]
        out = [None] * self.world_size
        with self._op("an all_gather of Python objects"):
            dist.all_gather_object(out, obj)
        return out

    def reduce(self, tensor: torch.Tensor, op: str = "mean") -> torch.Tensor:
        if op not in _OPS:
            raise MisconfigurationError(f"reduce op must be one of {', '.join(_OPS)}, got {op!r}")
        if not dist.is_initialized():
            return tensor
        # all_reduce works in place: reduce a copy so the caller's tensor keeps its own value.
        out = tensor.detach().clone()
        if op == "mean" and not out.is_floating_point():
            out = out.float()
        with self._op(f"an all_reduce ({op})"):
            dist.all_reduce(out, op=_OPS[op])
        return out / self.world_size if op == "mean" else out

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        if not dist.is_initialized():
            return decision
        votes = torch.tensor(int(bool(decision)), device=self._collective_device())
        with self._op("a vote of every rank (reduce_boolean_decision)"):
            dist.all_reduce(votes, op=dist.ReduceOp.SUM)
        return bool(votes == self.world_size) if all else bool(votes > 0)

    # ------------------------------------------------------------------ data
    def process_dataloader(self, loader, stage: str):
        """Give this process its share of a map-style ``DataLoader``: a ``DistributedSampler``.

        It shuffles only if the user's loader shuffled (a ``RandomSampler``), with the seed of
        ``seed_everything`` so every rank draws the same permutation; the Trainer calls
        ``set_epoch`` each epoch. ``drop_last=False``: the last batches are padded with repeated
        samples so that every rank runs the same number of steps.
        """
        from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler, SequentialSampler

        from ..data import rebuild_dataloader

        if self.world_size == 1 or not isinstance(loader, DataLoader):
            return loader
        if isinstance(loader.dataset, IterableDataset):
            if stage == "train":  # its shards may differ in length: end the epoch when any rank runs out
                from .uneven import even_batches

                return even_batches(loader, self)
            return loader  # an iterable dataset splits itself
        if not self.use_distributed_sampler or isinstance(loader.sampler, DistributedSampler):
            return loader  # a DistributedSampler is the user's own
        if loader.batch_size is None or not isinstance(loader.sampler, (RandomSampler, SequentialSampler)):
            rank_zero_warn(f"the {stage} dataloader has a custom sampler or batch_sampler; surge leaves it as is, so "
                           f"every rank sees the data that sampler gives (set a DistributedSampler yourself, or pass "
                           f"use_distributed_sampler=False to silence this)")
            return loader
        shuffle = stage == "train" and isinstance(loader.sampler, RandomSampler)
        sampler = DistributedSampler(loader.dataset, num_replicas=self.world_size, rank=self.global_rank,
                                     shuffle=shuffle, seed=int(os.environ.get("SURGE_GLOBAL_SEED", 0)), drop_last=False)
        return rebuild_dataloader(loader, sampler=sampler)

    def gather_predictions(self, outputs: list, loader) -> list:
        """Every rank's ``predict_step`` outputs, on every rank, in dataset order without the sampler's padding.

        Works when each output is a tensor whose first dimension is the batch and the loader has an
        unshuffled ``DistributedSampler`` (what ``process_dataloader`` puts in): rank r holds samples
        r, r + W, r + 2W, ... so interleaving the ranks' rows restores the order. The result is split
        into batches of the global batch size (per-rank batch size x world size), one per step.
        Other outputs are returned as they are: this rank's own, in its sampler's order.
        """
        from torch.utils.data import DistributedSampler

        sampler = getattr(loader, "sampler", None)
        if not dist.is_initialized() or self.world_size == 1 or not isinstance(sampler, DistributedSampler) \
                or sampler.shuffle or not outputs:
            return outputs
        tensors = all(isinstance(o, torch.Tensor) and o.dim() > 0 for o in outputs)
        if not self.reduce_boolean_decision(tensors, all=True):
            rank_zero_warn("predict under DDP returns each rank's own predictions: they are not all tensors with a "
                           "batch dimension, so surge cannot put them back in dataset order")
            return outputs
        device = outputs[0].device
        mine = torch.cat([o.detach().cpu() for o in outputs])
        everyone = [None] * self.world_size
        dist.all_gather_object(everyone, mine)
        if len({t.shape for t in everyone}) != 1:  # e.g. limit_predict_batches cut the ranks unevenly
            return outputs
        # Row k of rank r is sample r + k * W: stacking on dim 1 and flattening interleaves them.
        rows = torch.stack(everyone, dim=1).flatten(0, 1)[: len(sampler.dataset)]
        return list(rows.to(device).split(loader.batch_size * self.world_size))

    # ------------------------------------------------------------------ checkpoints
    def module_state_dict(self) -> dict:
        return self.module.state_dict()  # the user's module: keys without DDP's "module." prefix

    def __repr__(self) -> str:
        return f"DDP(rank={self.global_rank}/{self.world_size}, device={self.root_device})"


@register("ddp_spawn")
class DDPSpawn(DDP):
    """DDP whose workers are started from the calling process with ``torch.multiprocessing`` ("spawn").

    For notebooks and interactive sessions, where there is no script to run again. Each ``fit`` /
    ``validate`` / ``test`` / ``predict`` call pickles the trainer, the module and the data, starts
    ``devices`` fresh processes that run the stage as ranks 0..N-1, and waits for them. Rank 0's
    result comes back (fit's return, the metrics, the predictions), and after ``fit`` the trained
    weights are loaded into your module, along with the trainer's counters, ``callback_metrics`` and
    the callbacks' state (so ``test(ckpt_path="best")`` finds the best checkpoint).

    Example::

        trainer = surge.Trainer(strategy="ddp_spawn", accelerator="cpu", devices=2, max_epochs=3)
        trainer.fit(model, train_loader)        # model now holds the trained weights
        trainer.test(model, test_loader)

    The module, the data and their classes must be importable by a fresh interpreter: define them
    in a ``.py`` file (not a notebook cell) and guard a script's own code with ``if __name__ == "__main__":``.
    Starting processes costs a few seconds per call, and the optimizer state stays in the workers;
    from a script, ``strategy="ddp"`` is faster. Under torchrun or SLURM this strategy behaves as "ddp".
    """

    name = "ddp_spawn"

    def launch(self, fn, *args, **kwargs):
        from ..launch import pickle_for_spawn, spawn

        trainer = getattr(fn, "__self__", None)
        if self.cluster.creates_processes_externally or trainer is None:
            return fn(*args, **kwargs)
        parts = {"the module": trainer.module, "the datamodule": trainer.datamodule}
        parts.update({f"the {name} dataloader": loader for name, loader in trainer._given_loaders.items()
                      if loader is not None})
        pickle_for_spawn(parts)  # names the piece that cannot travel, before the whole trainer
        import tempfile

        with tempfile.TemporaryDirectory(prefix="surge-spawn-") as out:
            payload = pickle_for_spawn({"the trainer (with its callbacks and loggers)": (fn, args, kwargs, out)})
            spawn(_spawn_worker, payload, self.cluster, len(self.device_ids), cpu=self.root_device.type == "cpu")
            result = self._collect(trainer, out)
        # The run happened in the workers and ended normally (a worker's exception is raised above): this
        # process's state says so too, as after an in-process run (trainer.state.finished).
        if args and isinstance(args[0], str):
            trainer.state.fn = args[0]
        trainer.state.status = "finished"
        return result

    @staticmethod
    def _collect(trainer, out: str):
        """Bring rank 0's outcome into this process (nothing on a node without rank 0)."""
        from ..checkpoint import load_checkpoint

        path = os.path.join(out, "rank0.pt")
        if not os.path.exists(path):
            return None
        # Written by our own worker a moment ago, holding user objects (predictions): a full unpickle.
        back = torch.load(path, weights_only=False)
        weights = os.path.join(out, "weights.ckpt")
        if os.path.exists(weights):
            trainer.module.load_state_dict(load_checkpoint(weights)["state_dict"])
        trainer.state.load_state_dict(back["state"])
        for name in ("callback_metrics", "logged_metrics", "progress_bar_metrics"):
            getattr(trainer, name).clear()
            getattr(trainer, name).update(back[name])
        for cb, state in zip(trainer.callbacks, back["callbacks"]):
            if getattr(cb, "dirpath", "") is None and isinstance(state, dict):
                # A ModelCheckpoint picks its folder during the run; here, as after an in-process fit, it
                # must know it, or it would take the worker's best checkpoint for a stranger's.
                cb.dirpath = state.get("dirpath")
            if state is not None:  # (a state_dict() that returns None, as some overrides do: nothing to restore)
                cb.load_state_dict(state)
        for lg, state in zip(trainer.loggers, back["loggers"]):
            lg.load_state_dict(state)  # the next stage writes into the same version_N
        return back["result"]


def _spawn_worker(payload: bytes) -> None:
    """One spawned rank: rebuild the trainer, take this rank, run the stage; rank 0 writes what goes back."""
    import pickle

    fn, args, kwargs, out = pickle.loads(payload)["the trainer (with its callbacks and loggers)"]
    trainer = fn.__self__
    strategy = trainer.strategy
    # RANK, LOCAL_RANK, WORLD_SIZE are in the environment now: configure finds them as under torchrun.
    strategy.configure(strategy.accelerator, strategy.device_ids, strategy.num_nodes, trainer.precision)
    result = fn(*args, **kwargs)
    if strategy.is_global_zero:
        _send_back(trainer, strategy, args[0] if args else None, result, out)
    # Leave together, and take the process group down before the interpreter does: a rank whose
    # gloo threads are torn down at exit while its peers still talk to it can abort (SIGABRT).
    strategy.barrier("spawn-exit")
    strategy._destroy_group()


def _send_back(trainer, strategy, stage, result, out: str) -> None:
    """Rank 0: the weights (after fit) and everything :meth:`DDPSpawn._collect` restores, into ``out``."""
    from ..checkpoint import save_checkpoint

    if stage == "fit":
        save_checkpoint({"state_dict": {k: v.detach().cpu() for k, v in strategy.module_state_dict().items()}},
                        os.path.join(out, "weights.ckpt"))
    torch.save({"result": result, "state": trainer.state.state_dict(),
                "callback_metrics": _on_cpu(trainer.callback_metrics), "logged_metrics": _on_cpu(trainer.logged_metrics),
                "progress_bar_metrics": _on_cpu(trainer.progress_bar_metrics),
                "callbacks": [cb.state_dict() for cb in trainer.callbacks],
                "loggers": [lg.state_dict() for lg in trainer.loggers]}, os.path.join(out, "rank0.pt"))


def _on_cpu(metrics: dict) -> dict:
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
