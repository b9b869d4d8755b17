"""Dataloaders as Lightning code uses them: CombinedLoader's modes, several train loaders in fit, the
trainer's *_dataloaders views, when loaders are requested (and reloaded), empty data, the workers warning."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

import surge
from surge.callbacks import ModelCheckpoint
from surge.combined_loader import CombinedLoader
from surge.demos.toy import ToyModel, ToyDataset
from surge.utils import MisconfigurationError


def make_trainer(tmp_path, **kwargs):
    for key, value in dict(enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                           logger=False, num_sanity_val_steps=0, accelerator="cpu", max_epochs=1).items():
        kwargs.setdefault(key, value)
    return surge.Trainer(default_root_dir=tmp_path, **kwargs)


def numbers(n, batch_size, shuffle=False):
    return DataLoader(torch.arange(n), batch_size=batch_size, shuffle=shuffle)


def values(batch):
    return None if batch is None else batch.tolist()


# ---------------------------------------------------------------- CombinedLoader on its own
def test_each_mode_yields_what_it_promises():
    loaders = {"a": numbers(6, 4), "b": numbers(15, 5)}  # 2 and 3 batches
    seen = {}
    for mode in ("min_size", "max_size_cycle", "max_size", "sequential"):
        combined = CombinedLoader(loaders, mode)
        seen[mode] = [(b if mode == "sequential" else {k: values(v) for k, v in b.items()}, i, d)
                      for b, i, d in combined]
        assert len(combined) == len(seen[mode])
    a0, a1 = [0, 1, 2, 3], [4, 5]
    b0, b1, b2 = list(range(5)), list(range(5, 10)), list(range(10, 15))
    assert seen["min_size"] == [({"a": a0, "b": b0}, 0, 0), ({"a": a1, "b": b1}, 1, 0)]
    assert seen["max_size_cycle"] == [({"a": a0, "b": b0}, 0, 0), ({"a": a1, "b": b1}, 1, 0), ({"a": a0, "b": b2}, 2, 0)]
    assert seen["max_size"] == [({"a": a0, "b": b0}, 0, 0), ({"a": a1, "b": b1}, 1, 0), ({"a": None, "b": b2}, 2, 0)]
    # sequential: each loader's own batches, batch_idx counted per loader, dataloader_idx its position
    assert [(values(b), i, d) for b, i, d in seen["sequential"]] == [
        (a0, 0, 0), (a1, 1, 0), (b0, 0, 1), (b1, 1, 1), (b2, 2, 1)]
    assert CombinedLoader(loaders).mode == "min_size"  # the default, as in Lightning


def test_shapes_flattened_and_limits():
    inner = [numbers(4, 2), numbers(6, 2)]
    combined = CombinedLoader({"x": inner, "y": numbers(2, 2)}, "max_size_cycle")
    assert combined.flattened == [inner[0], inner[1], combined.iterables["y"]]
    batch, _, _ = next(iter(combined))
    assert set(batch) == {"x", "y"} and isinstance(batch["x"], list) and len(batch["x"]) == 2
    assert CombinedLoader([1, 2, 3]).flattened == [[1, 2, 3]]  # a list of numbers is one iterable
    replaced = [numbers(2, 1), numbers(2, 1), numbers(2, 1)]
    combined.flattened = replaced
    assert combined.iterables == {"x": replaced[:2], "y": replaced[2]}
    with pytest.raises(ValueError, match=r"flattened length \(1\) and existing length \(3\)"):
        combined.flattened = replaced[:1]
    sequential = CombinedLoader([["a", "b", "c"], ["d", "e"]], "sequential")
    sequential.limits = [1, 1]
    assert list(sequential) == [("a", 0, 0), ("d", 0, 1)] and len(sequential) == 2
    sequential.limits = [0, float("inf")]
    assert list(sequential) == [("d", 0, 1), ("e", 1, 1)]
    with pytest.raises(ValueError, match=r"number of limits \(1\) and number of iterables \(2\)"):
        sequential.limits = [1]


def test_bad_mode_and_unknown_length():
    with pytest.raises(ValueError, match=r"Unsupported mode 'longest'.*'max_size_cycle'"):
        CombinedLoader([range(3)], "longest")

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(3))

    unbounded = CombinedLoader([DataLoader(Stream()), range(2)], "max_size_cycle")
    with pytest.raises(TypeError, match="has no length"):
        len(unbounded)
    assert len(CombinedLoader([DataLoader(Stream()), range(2)], "min_size")) == 2  # the sized one bounds it
    assert len(CombinedLoader([range(3)])) == 3  # no iter() needed first


def test_a_restarted_loader_leaves_the_global_random_stream_alone():
    def epoch():
        torch.manual_seed(0)
        combined = CombinedLoader([numbers(4, 2, shuffle=True), numbers(12, 2)], "max_size_cycle")
        return [values(b[0]) for b, _, _ in combined], torch.rand(1)

    first, after_first = epoch()
    second, after_second = epoch()
    assert first == second and len(first) == 6  # restarts reproduce
    assert torch.equal(after_first, after_second)
    # The stream moved only as far as one pass of each loader takes it: the restarts drew nothing from it.
    torch.manual_seed(0)
    passes = [iter(numbers(4, 2, shuffle=True)), iter(numbers(12, 2))]
    assert [values(b) for b in passes[0]] == first[:2]
    list(passes[1])
    assert torch.equal(torch.rand(1), after_first)


# ---------------------------------------------------------------- several train loaders in fit
class Recording(ToyModel):
    def __init__(self):
        super().__init__()
        self.batches = []

    def training_step(self, batch, batch_idx):
        self.batches.append((self.current_epoch, batch_idx, batch))
        torch.rand(1)  # draws from the global stream between batches, as dropout would
        tensors = batch.values() if isinstance(batch, dict) else batch
        x = torch.cat([t.float().reshape(-1, 1) / 100 for t in tensors if t is not None]).expand(-1, 32)
        return self.loss(x)

    validation_step = val_dataloader = None


def test_a_dict_of_train_loaders_cycles_the_shorter_one(tmp_path):
    model = Recording()
    loaders = {"a": numbers(4, 2), "b": numbers(10, 2)}  # 2 and 5 batches
    trainer = make_trainer(tmp_path, max_epochs=2)
    trainer.fit(model, train_dataloaders=loaders)
    assert trainer.num_training_batches == 5 and trainer.global_step == 10
    assert trainer.train_dataloader is loaders or trainer.train_dataloader == loaders
    first_epoch = [(i, values(b["a"]), values(b["b"])) for e, i, b in model.batches if e == 0]
    assert first_epoch == [(0, [0, 1], [0, 1]), (1, [2, 3], [2, 3]), (2, [0, 1], [4, 5]), (3, [2, 3], [6, 7]),
                           (4, [0, 1], [8, 9])]


def test_a_list_or_a_combined_loader_keeps_its_shape_and_mode(tmp_path):
    model = Recording()
    trainer = make_trainer(tmp_path, limit_train_batches=3)
    trainer.fit(model, train_dataloaders=[numbers(4, 2), numbers(10, 2)])
    assert trainer.num_training_batches == 3  # limit 3 of each: max(min(2, 3), min(5, 3))
    assert all(isinstance(b, list) and len(b) == 2 for *_, b in model.batches)

    model = Recording()
    trainer = make_trainer(tmp_path)
    trainer.fit(model, train_dataloaders=CombinedLoader([numbers(4, 2), numbers(10, 2)], "min_size"))
    assert trainer.num_training_batches == 2 and len(model.batches) == 2
    assert isinstance(trainer.train_dataloader, list)  # the iterables, as Lightning shows them

    model = Recording()
    trainer = make_trainer(tmp_path)
    trainer.fit(model, train_dataloaders=CombinedLoader([numbers(4, 2), numbers(10, 2)], "max_size"))
    assert [values(b[0]) for *_, b in model.batches][2:] == [None, None, None]

    with pytest.raises(MisconfigurationError, match=r"mode='sequential'.*'max_size_cycle'"):
        make_trainer(tmp_path).fit(Recording(), train_dataloaders=CombinedLoader([numbers(4, 2)], "sequential"))


def test_each_inner_loader_is_prepared_and_the_batch_transferred_whole(tmp_path, monkeypatch):
    model = Recording()
    transferred = []

    def on_before_batch_transfer(batch, dataloader_idx):
        transferred.append((sorted(batch), dataloader_idx))
        return batch

    model.on_before_batch_transfer = on_before_batch_transfer
    trainer = make_trainer(tmp_path, limit_train_batches=2)
    prepared, epochs = [], []
    original = trainer.strategy.process_dataloader

    def process(loader, stage):
        prepared.append((len(loader), stage))
        return original(loader, stage)

    class EpochSampler(torch.utils.data.SequentialSampler):
        def set_epoch(self, epoch):
            epochs.append(epoch)

    monkeypatch.setattr(trainer.strategy, "process_dataloader", process)
    data = torch.arange(6)
    trainer.fit(model, train_dataloaders={"a": numbers(4, 2),
                                          "b": DataLoader(data, batch_size=2, sampler=EpochSampler(data))})
    assert prepared == [(2, "train"), (3, "train")]  # each loader gets its distributed sampler here
    assert transferred == [(["a", "b"], 0), (["a", "b"], 0)]
    assert epochs == [0]


def test_a_mid_epoch_resume_with_two_shuffled_loaders_sees_the_same_batches(tmp_path):
    def loaders():
        return {"a": numbers(8, 4, shuffle=True), "b": numbers(30, 6, shuffle=True)}  # 2 and 5 batches

    surge.seed_everything(5)
    full = Recording()
    save = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    make_trainer(tmp_path / "full", max_epochs=2, callbacks=[save], enable_checkpointing=True).fit(full, loaders())
    surge.seed_everything(99)  # the checkpoint brings the random state back
    resumed = Recording()
    trainer = make_trainer(tmp_path / "resumed", max_epochs=2)
    with pytest.warns(UserWarning, match="read again and dropped"):
        trainer.fit(resumed, loaders(), ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=3.ckpt"))

    def rows(model):
        return [(e, i, values(b["a"]), values(b["b"])) for e, i, b in model.batches]

    # "a" started again at batch 2, before the checkpoint: after the resume it goes on in the same order
    assert rows(resumed) == rows(full)[3:]


# ---------------------------------------------------------------- what the trainer shows
def test_dataloader_views_are_the_loaders_as_given(tmp_path):
    model = ToyModel()
    train, val = model.train_dataloader(), model.val_dataloader()
    trainer = make_trainer(tmp_path, limit_train_batches=2, limit_val_batches=2)
    assert trainer.train_dataloader is None and trainer.val_dataloaders is None
    trainer.fit(model, train, val)
    assert trainer.train_dataloader is train and trainer.val_dataloaders is val
    assert trainer.num_training_batches == 2 and trainer.num_val_batches == [2]

    model.test_step = lambda batch, batch_idx, dataloader_idx=0: None  # several loaders: it takes dataloader_idx
    model.validation_step = model.test_step
    tests = [model.test_dataloader(), model.test_dataloader()]
    trainer.test(model, dataloaders=tests, verbose=False)
    assert trainer.test_dataloaders == tests and trainer.num_test_batches == [4, 4]
    trainer.validate(model, dataloaders={"x": val, "y": val}, verbose=False)
    assert trainer.val_dataloaders == {"x": val, "y": val} and trainer.num_val_batches == [2, 2]
    predict = model.predict_dataloader()
    trainer.predict(model, dataloaders=predict)
    assert trainer.predict_dataloaders is predict

    no_val = ToyModel()
    no_val.validation_step = None
    with pytest.warns(UserWarning, match="no `validation_step`"):
        make_trainer(tmp_path, limit_train_batches=1).fit(no_val)


def test_a_loader_without_length_counts_inf(tmp_path):
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(torch.randn(12, 32))

    model = ToyModel()
    trainer = make_trainer(tmp_path)
    trainer.fit(model, DataLoader(Stream(), batch_size=4), DataLoader(Stream(), batch_size=4))
    assert trainer.num_training_batches == float("inf") and trainer.num_val_batches == [float("inf")]
    assert trainer.global_step == 3


# ---------------------------------------------------------------- when loaders are requested
class Requests(ToyModel):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def train_dataloader(self):
        self.calls.append(("train", self.current_epoch, self.trainer.sanity_checking))
        return super().train_dataloader()

    def val_dataloader(self):
        self.calls.append(("val", self.current_epoch, self.trainer.sanity_checking))
        return super().val_dataloader()


@pytest.mark.parametrize("sanity, expected", [
    (2, [("val", 0, True), ("train", 0, False)]),  # the sanity check asks first
    (0, [("train", 0, False), ("val", 0, False)]),
])
def test_loaders_are_requested_once_in_lightnings_order(tmp_path, sanity, expected):
    calls = []
    make_trainer(tmp_path, max_epochs=3, limit_train_batches=2, limit_val_batches=1,
                 num_sanity_val_steps=sanity).fit(Requests(calls))
    assert calls == expected


def test_reload_every_epoch_asks_for_both_each_epoch(tmp_path):
    calls = []
    make_trainer(tmp_path, max_epochs=3, limit_train_batches=1, limit_val_batches=1,
                 reload_dataloaders_every_n_epochs=1).fit(Requests(calls))
    assert [(k, e) for k, e, _ in calls] == [("train", 0), ("val", 0), ("train", 1), ("val", 1), ("train", 2), ("val", 2)]


@pytest.mark.parametrize("sanity", [0, 1])
def test_reload_follows_the_validation_epochs(tmp_path, sanity):
    calls, validated = [], []

    class Model(Requests):
        def validation_step(self, batch, batch_idx):
            if not self.trainer.sanity_checking:
                validated.append(self.current_epoch)
            return super().validation_step(batch, batch_idx)

    make_trainer(tmp_path, max_epochs=10, limit_train_batches=1, limit_val_batches=1, check_val_every_n_epoch=3,
                 reload_dataloaders_every_n_epochs=4, num_sanity_val_steps=sanity).fit(Model(calls))
    assert [e for k, e, s in calls if k == "train"] == [0, 4, 8]
    assert [e for k, e, s in calls if k == "val" and not s] == [2, 8]  # first needed at 2, then 6 epochs later
    assert [e for k, e, s in calls if k == "val" and s] == ([0] if sanity else [])
    assert validated == [2, 5, 8]


def test_estimated_stepping_batches_requests_the_train_loader_early(tmp_path):
    calls = []

    class Model(Requests):
        def configure_optimizers(self):
            self.calls.append(("steps", self.trainer.estimated_stepping_batches, False))
            return super().configure_optimizers()

    make_trainer(tmp_path, max_epochs=2, limit_train_batches=3, limit_val_batches=1,
                 num_sanity_val_steps=1).fit(Model(calls))
    assert calls == [("train", 0, False), ("steps", 6, False), ("val", 0, True)]


# ---------------------------------------------------------------- empty data
def test_a_train_loader_of_length_zero_ends_fit_quietly(tmp_path):
    started = []

    class Model(ToyModel):
        def on_train_start(self):
            started.append(True)

    trainer = make_trainer(tmp_path, max_epochs=2)
    with pytest.warns(UserWarning, match=r"Total length of `DataLoader` across ranks is zero"):
        trainer.fit(Model(), DataLoader(ToyDataset(32, 0), batch_size=4))
    assert trainer.num_training_batches == 0 and trainer.global_step == 0 and not started


def test_an_iterable_that_yields_nothing_ends_each_epoch_quietly(tmp_path):
    class Nothing(IterableDataset):
        def __iter__(self):
            return iter(())

    epochs = []

    class Model(ToyModel):
        def on_train_epoch_end(self):
            epochs.append(self.current_epoch)

    trainer = make_trainer(tmp_path, max_epochs=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*does not have many workers")
        trainer.fit(Model(), DataLoader(Nothing(), batch_size=4))
    assert epochs == [0, 1, 2] and trainer.global_step == 0 and trainer.current_epoch == 3


def test_an_empty_val_loader_is_skipped_with_a_warning(tmp_path):
    validated = []

    class Model(ToyModel):
        def on_validation_start(self):
            validated.append(True)

    trainer = make_trainer(tmp_path, limit_train_batches=2)
    with pytest.warns(UserWarning, match=r"the val dataloader has no batches"):
        trainer.fit(Model(), val_dataloaders=DataLoader(ToyDataset(32, 0)))
    assert trainer.num_val_batches == [0] and not validated and trainer.global_step == 2


# ---------------------------------------------------------------- the workers warning
@pytest.mark.parametrize("stage", ["train", "val", "test"])
def test_few_workers_warns_where_the_cpus_allow_more(tmp_path, monkeypatch, stage):
    import surge.trainer_data as trainer_data

    monkeypatch.setattr(trainer_data, "_cpus_available", lambda: 4)
    model = ToyModel()
    trainer = make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=1)
    with pytest.warns(UserWarning, match=rf"The '{stage}_dataloader' does not have many workers.*num_workers=3"):
        if stage == "test":
            trainer.test(model, verbose=False)
        else:
            trainer.fit(model)


def test_no_workers_warning_on_a_small_machine(tmp_path, monkeypatch):
    import surge.trainer_data as trainer_data

    monkeypatch.setattr(trainer_data, "_cpus_available", lambda: 2)  # 2 CPUs: one for the loop, at most 1 worker
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*does not have many workers")
        make_trainer(tmp_path, limit_train_batches=1, limit_val_batches=1).fit(ToyModel())


def test_the_workers_count_is_per_local_device(tmp_path, monkeypatch):
    import surge.trainer_data as trainer_data

    monkeypatch.setattr(trainer_data, "_cpus_available", lambda: 16)
    trainer = make_trainer(tmp_path)
    monkeypatch.setattr(type(trainer), "num_devices", property(lambda self: 4))
    with pytest.warns(UserWarning, match=r"16 CPUs for 4 device\(s\) allow `num_workers=3`"):
        trainer._check_workers(DataLoader(range(4), num_workers=1), "train_dataloader")


def test_the_sanity_check_with_its_val_request_leaves_the_random_streams_as_it_found_them(tmp_path):
    # A dataset drawn when its dataloader is requested: the val set (requested for the sanity check) and the
    # train set (requested after it) come from the same random state, as in Lightning (whose sanity check runs
    # in isolate_rng), so a seeded run trains on the same data with or without the sanity check.
    import surge.demos.boring as boring

    def train_data_seen(sanity_steps):
        torch.manual_seed(7)
        seen = {}

        class Model(boring.BoringModel):
            def training_step(self, batch, batch_idx):
                seen.setdefault("train", batch.clone())
                return super().training_step(batch, batch_idx)

            def validation_step(self, batch, batch_idx):
                seen.setdefault("val", batch.clone())
                return super().validation_step(batch, batch_idx)

        surge.Trainer(default_root_dir=str(tmp_path), max_steps=1, limit_val_batches=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=sanity_steps).fit(Model())
        return seen

    with_check, without = train_data_seen(2), train_data_seen(0)
    assert torch.equal(with_check["train"], without["train"])
    assert torch.equal(with_check["train"], with_check["val"])  # both drawn from the state the check started with
