"""Property-based bad input: every case works or raises one clear surge error naming the argument.

"Clear" means: a SurgeError (MisconfigurationError, CheckpointError ...), or a TypeError/ValueError
raised from surge's own code whose message names the argument; never an exception from deep inside torch.
"""
import collections
import dataclasses
import traceback

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, IterableDataset

import surge
from surge.demos.toy import ToyModel, ToyDataset
from surge.utils import SurgeError

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
QUIET = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def _raised_by_surge(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and "/surge/" in frames[-1].filename


def assert_clear(err: BaseException, *names: str) -> None:
    """``err`` is surge's own, and its message names one of ``names`` (when given)."""
    if isinstance(err, SurgeError) or (isinstance(err, (TypeError, ValueError)) and _raised_by_surge(err)):
        if names:
            assert any(n in str(err) for n in names), f"{type(err).__name__}: {err} does not name {names}"
        return
    raise AssertionError(f"unclear error {type(err).__name__}: {err}") from err


anything = st.one_of(st.none(), st.booleans(), st.integers(-3, 5), st.floats(-1, 2), st.just(float("nan")),
                     st.text(max_size=6), st.lists(st.integers(0, 2), max_size=2))

TRAINER_ARGS = {
    "max_epochs": st.one_of(anything, st.integers(-2, 2)),
    "max_steps": st.one_of(anything, st.integers(-2, 3)),
    "limit_train_batches": st.one_of(anything, st.floats(0, 1), st.integers(0, 3)),
    "limit_val_batches": st.one_of(anything, st.floats(0, 1)),
    "accumulate_grad_batches": st.one_of(anything, st.integers(0, 3)),
    "precision": st.one_of(anything, st.sampled_from(["32-true", "bf16-mixed", "16-mixed", "64-true", "bf16", 16, 32,
                                                      "8-true", "fp16"])),
    "val_check_interval": st.one_of(anything, st.floats(0, 1), st.integers(1, 3)),
    "log_every_n_steps": st.one_of(anything, st.integers(0, 3)),
    "gradient_clip_val": st.one_of(anything, st.floats(0, 2)),
    "gradient_clip_algorithm": st.one_of(anything, st.sampled_from(["norm", "value", "max"])),
    "devices": st.one_of(anything, st.sampled_from(["auto", 1, "1", [0], "0,", "-1", 0, "cpu"])),
    "accelerator": st.one_of(anything, st.sampled_from(["auto", "cpu", "gpu", "tpu", "cuda"])),
    "num_sanity_val_steps": st.one_of(anything, st.integers(-2, 2)),
    "check_val_every_n_epoch": st.one_of(anything, st.integers(0, 2)),
    "on_nan": st.one_of(anything, st.sampled_from(["raise", "skip"])),
}


@SETTINGS
@given(st.fixed_dictionaries({}, optional=TRAINER_ARGS))
def test_trainer_arguments(tmp_path_factory, kwargs):
    kwargs.setdefault("max_steps", 2)
    try:
        trainer = surge.Trainer(default_root_dir=tmp_path_factory.mktemp("t"), **QUIET, **kwargs)
    except Exception as err:
        assert_clear(err, *kwargs)
        return
    try:
        trainer.fit(ToyModel(), DataLoader(ToyDataset(32, 8), batch_size=4),
                    DataLoader(ToyDataset(32, 8), batch_size=4))
    except Exception as err:
        assert_clear(err)


values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10), st.booleans(), st.none(),
                   st.text(max_size=3), st.builds(torch.tensor, st.floats(-5, 5)),
                   st.builds(lambda n: torch.ones(n), st.integers(0, 3)),
                   st.builds(lambda v: torch.tensor(v, dtype=torch.int64), st.integers(-5, 5)),
                   st.lists(st.floats(-1, 1), max_size=2), st.just({"a": 1.0}))
LOG_ARGS = st.fixed_dictionaries({}, optional={
    "on_step": st.one_of(st.none(), st.booleans()), "on_epoch": st.one_of(st.none(), st.booleans()),
    "reduce_fx": st.one_of(st.sampled_from(["mean", "sum", "max", "min", "avg", "median", "MEAN"]),
                           st.sampled_from([torch.mean, torch.sum, torch.max, max, len])),
    "prog_bar": st.booleans(), "sync_dist": st.booleans(), "batch_size": st.one_of(st.none(), st.integers(1, 4)),
})


@SETTINGS
@given(name=st.one_of(st.text(max_size=8), st.none(), st.integers()), value=values, args=LOG_ARGS,
       where=st.sampled_from(["training_step", "validation_step", "on_train_epoch_end"]))
def test_self_log_arguments(tmp_path_factory, name, value, args, where):
    class Logs(ToyModel):
        def _log(self, hook):
            if hook == where:
                self.log(name, value, **args)

        def training_step(self, batch, batch_idx):
            self._log("training_step")
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch, batch_idx):
            self._log("validation_step")
            return super().validation_step(batch, batch_idx)

        def on_train_epoch_end(self):
            self._log("on_train_epoch_end")

    trainer = surge.Trainer(default_root_dir=tmp_path_factory.mktemp("l"), max_epochs=1, accelerator="cpu",
                            num_sanity_val_steps=0, **QUIET)
    try:
        trainer.fit(Logs(), DataLoader(ToyDataset(32, 8), batch_size=4), DataLoader(ToyDataset(32, 8), batch_size=4))
    except Exception as err:
        assert_clear(err, "self.log")


def _optimizer_returns(params):
    sgd = lambda: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    return st.sampled_from([
        lambda: sgd(), lambda: [sgd()], lambda: (sgd(),), lambda: ([sgd()], []),
        lambda: {"optimizer": sgd()}, lambda: {"optimizer": sgd(), "lr_scheduler": None},
        lambda: (lambda o: {"optimizer": o, "lr_scheduler": torch.optim.lr_scheduler.StepLR(o, 1)})(sgd()),
        lambda: (lambda o: {"optimizer": o, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(o, 1),
                                                             "interval": "hour"}})(sgd()),
        lambda: (lambda o: ([o], [torch.optim.lr_scheduler.StepLR(o, 1)]))(sgd()),
        lambda: (lambda o: {"optimizer": o, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(o)}})(sgd()),
        lambda: "adam", lambda: 3, lambda: [], lambda: {}, lambda: {"lr_scheduler": 1}, lambda: [1, 2],
        lambda: ([], [sgd()]), lambda: ({"optimizer": 1},), lambda: None,
    ])


@SETTINGS
@given(st.data())
def test_configure_optimizers_return_shapes(tmp_path_factory, data):
    model = ToyModel()
    make = data.draw(_optimizer_returns(model.parameters()))
    model.configure_optimizers = lambda: make()
    trainer = surge.Trainer(default_root_dir=tmp_path_factory.mktemp("o"), max_steps=2, accelerator="cpu", **QUIET)
    try:
        trainer.fit(model, DataLoader(ToyDataset(32, 8), batch_size=4))
    except Exception as err:
        assert_clear(err, "configure_optimizers", "optimizer", "lr_scheduler", "scheduler")


Pair = collections.namedtuple("Pair", "x extra")


@dataclasses.dataclass
class Box:
    x: torch.Tensor
    tag: str = "t"


def _wrap(kind, x):
    return {"dict": lambda: {"x": x, "meta": [1, "a"]}, "list": lambda: [x, (x,)], "tuple": lambda: (x, {"y": x}),
            "namedtuple": lambda: Pair(x, None), "dataclass": lambda: Box(x), "tensor": lambda: x,
            "nested": lambda: {"a": [Pair(x, {"b": (x,)})]}}[kind]()


def _first_tensor(batch):
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Box):
        return batch.x
    items = batch.values() if isinstance(batch, dict) else batch
    for item in items:
        if isinstance(item, (torch.Tensor, dict, list, tuple, Box)):
            return _first_tensor(item)


@SETTINGS
@given(kind=st.sampled_from(["dict", "list", "tuple", "namedtuple", "dataclass", "tensor", "nested"]),
       loader_kind=st.sampled_from(["map", "iterable_sized", "iterable_unsized", "empty_map", "empty_iterable", "list"]),
       n=st.integers(0, 5), limit=st.one_of(st.just(1.0), st.floats(0, 1), st.integers(0, 3)))
def test_batch_structures_and_dataloader_kinds(tmp_path_factory, kind, loader_kind, n, limit):
    samples = [torch.randn(32) for _ in range(0 if loader_kind.startswith("empty") else n)]

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(samples)

    class SizedStream(Stream):
        def __len__(self):
            return len(samples)

    def collate(items):
        return _wrap(kind, torch.stack(items))

    if loader_kind in ("map", "empty_map"):
        loader = DataLoader(samples, batch_size=2, collate_fn=collate)
    elif loader_kind == "list":
        loader = [collate(samples[i:i + 2]) for i in range(0, len(samples), 2)]
    else:
        loader = DataLoader(SizedStream() if loader_kind == "iterable_sized" else Stream(), batch_size=2, collate_fn=collate)

    class Net(ToyModel):
        def training_step(self, batch, batch_idx):
            return self(_first_tensor(batch)).sum()

    trainer = surge.Trainer(default_root_dir=tmp_path_factory.mktemp("b"), max_epochs=1, accelerator="cpu",
                            limit_train_batches=limit, **QUIET)
    try:
        trainer.fit(Net(), loader)
    except Exception as err:
        assert_clear(err, "dataloader", "limit_train_batches", "batch")
