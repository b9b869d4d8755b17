"""ModelCheckpoint's Lightning 2.6 arguments and names: versions, last-file templates, timed saves, saves on
exceptions, YAML export, monitor="epoch", links, CLI signatures, fast_dev_run. Each test reads the files."""
from __future__ import annotations

import inspect
import os
import types
from datetime import timedelta

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.callbacks import ModelCheckpoint
from surge.callbacks import checkpoint as checkpoint_module
from surge.utils import MisconfigurationError


def loader(n=32, batch_size=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch_size)


class Tiny(surge.Module):
    def __init__(self, fail_at_batch=None, on_batch=None):
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.fail_at_batch = fail_at_batch
        self.on_batch = on_batch

    def training_step(self, batch, batch_idx):
        if self.on_batch is not None:
            self.on_batch()
        if batch_idx == self.fail_at_batch:
            raise RuntimeError("boom in training_step")
        x, y = batch
        return F.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        # 0.5, 0.25, 0.75, 0.125 by epoch
        self.log("val_loss", torch.tensor([0.5, 0.25, 0.75, 0.125][self.current_epoch % 4]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(tmp_path, callbacks, module=None, val=True, ckpt_path=None, **kw):
    kw.setdefault("max_epochs", 2)
    trainer = surge.Trainer(default_root_dir=str(tmp_path), callbacks=callbacks, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw)
    trainer.fit(module or Tiny(), loader(), loader(16) if val else None, ckpt_path=ckpt_path)
    return trainer


def names(folder):
    return sorted(os.listdir(folder))


def test_the_signature_is_lightnings_in_its_order_and_a_cli_parser_reads_it():
    order = ["dirpath", "filename", "monitor", "verbose", "save_last", "save_top_k", "save_on_exception",
             "save_weights_only", "mode", "auto_insert_metric_name", "every_n_train_steps", "train_time_interval",
             "every_n_epochs", "save_on_train_epoch_end", "enable_version_counter"]
    assert list(inspect.signature(ModelCheckpoint).parameters) == order
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(ModelCheckpoint, "ckpt")
    cfg = parser.parse_args(["--ckpt.save_last", "link", "--ckpt.monitor", "val_loss",
                             "--ckpt.train_time_interval", "0:05:00", "--ckpt.enable_version_counter", "false"])
    cb = parser.instantiate_classes(cfg).ckpt
    assert isinstance(cb, ModelCheckpoint)
    assert cb.save_last == "link" and cb.train_time_interval == timedelta(minutes=5)
    assert cb.enable_version_counter is False and cb.every_n_epochs == 0
    # the annotations are types, not strings: a parser given one parameter's annotation reads it
    save_last = jsonargparse.ArgumentParser()
    save_last.add_argument("--a", type=inspect.signature(ModelCheckpoint).parameters["save_last"].annotation)
    assert [save_last.parse_args(["--a", v]).a for v in ("link", "true", "no")] == ["link", True, False]


def test_state_key_is_lightnings_and_names_the_time_interval():
    assert ModelCheckpoint(monitor="val_loss").state_key == (
        "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 1,"
        " 'train_time_interval': None}")
    timed = ModelCheckpoint(train_time_interval=timedelta(seconds=30))
    assert "'every_n_epochs': 0" in timed.state_key
    assert "'train_time_interval': datetime.timedelta(seconds=30)" in timed.state_key


def test_bad_schedules_and_save_last_values_are_refused():
    with pytest.raises(MisconfigurationError):
        ModelCheckpoint(every_n_train_steps=2, train_time_interval=timedelta(seconds=1))
    with pytest.raises(MisconfigurationError):
        ModelCheckpoint(train_time_interval=30)
    with pytest.raises(MisconfigurationError):
        ModelCheckpoint(save_last="always")


def test_a_tilde_in_dirpath_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cb = ModelCheckpoint(dirpath="~/ckpts")
    assert cb.dirpath == os.path.join(os.path.realpath(tmp_path), "ckpts")
    fit(tmp_path, [cb], max_epochs=1)
    assert names(tmp_path / "ckpts") == ["epoch=0-step=4.ckpt"]


def test_format_checkpoint_name_takes_lightnings_arguments(tmp_path):
    cb = ModelCheckpoint(dirpath=str(tmp_path), filename="{epoch:02d}-{val_loss:.2f}")
    assert cb.format_checkpoint_name({"epoch": 3, "val_loss": torch.tensor(0.1234)}) == str(tmp_path / "epoch=03-val_loss=0.12.ckpt")
    assert os.path.basename(cb.format_checkpoint_name({"epoch": 3}, filename="{epoch}", ver=2, prefix="run")) == "run-epoch=3-v2.ckpt"
    assert ModelCheckpoint(filename="{step}").format_checkpoint_name({"step": 0}) == "step=0.ckpt"


def test_a_second_fit_into_the_same_folder_gets_versioned_names(tmp_path):
    folder = str(tmp_path / "ck")
    fit(tmp_path, [ModelCheckpoint(dirpath=folder, save_last=True)], max_epochs=1)
    assert names(folder) == ["epoch=0-step=4.ckpt", "last.ckpt"]
    second = ModelCheckpoint(dirpath=folder, save_last=True)
    fit(tmp_path, [second], max_epochs=1)
    assert names(folder) == ["epoch=0-step=4-v1.ckpt", "epoch=0-step=4.ckpt", "last-v1.ckpt", "last.ckpt"]
    assert second.best_model_path.endswith("epoch=0-step=4-v1.ckpt") and second.last_model_path.endswith("last-v1.ckpt")
    third = ModelCheckpoint(dirpath=folder, save_last=True)
    fit(tmp_path, [third], max_epochs=1)
    assert third.best_model_path.endswith("-v2.ckpt") and third.last_model_path.endswith("last-v2.ckpt")


def test_without_the_version_counter_a_second_fit_overwrites(tmp_path):
    folder = str(tmp_path / "ck")
    for _ in range(2):
        fit(tmp_path, [ModelCheckpoint(dirpath=folder, save_last=True, enable_version_counter=False)], max_epochs=1)
    assert names(folder) == ["epoch=0-step=4.ckpt", "last.ckpt"]


def test_two_saves_with_one_name_in_one_fit_are_versioned(tmp_path):
    cb = ModelCheckpoint(dirpath=str(tmp_path / "ck"), filename="{epoch}", every_n_train_steps=2, save_top_k=-1,
                         monitor="step", mode="max")
    fit(tmp_path, [cb], max_epochs=1, val=False)
    assert names(tmp_path / "ck") == ["epoch=0-v1.ckpt", "epoch=0.ckpt"]
    assert cb.best_model_path.endswith("epoch=0-v1.ckpt")
    # without a monitor the newest is the best and a save under its name replaces it (as in Lightning)
    newest = ModelCheckpoint(dirpath=str(tmp_path / "ck2"), filename="{epoch}", every_n_train_steps=2)
    fit(tmp_path, [newest], max_epochs=1, val=False)
    assert names(tmp_path / "ck2") == ["epoch=0.ckpt"]
    assert torch.load(tmp_path / "ck2" / "epoch=0.ckpt", weights_only=False)["global_step"] == 4


def test_a_resumed_run_continues_its_own_last_file(tmp_path):
    folder = str(tmp_path / "ck")
    fit(tmp_path, [ModelCheckpoint(dirpath=folder, save_last=True)], max_epochs=1)
    resumed = ModelCheckpoint(dirpath=folder, save_last=True)
    trainer = fit(tmp_path, [resumed], max_epochs=2, ckpt_path="last")
    assert trainer.global_step == 8
    assert names(folder) == ["epoch=1-step=8.ckpt", "last.ckpt"]  # the better epoch 1 replaced epoch 0
    assert torch.load(os.path.join(folder, "last.ckpt"), weights_only=False)["global_step"] == 8


def test_a_templated_last_name_replaces_the_previous_last_file(tmp_path):
    cb = ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_last=True, save_top_k=0)
    cb.CHECKPOINT_NAME_LAST = "{epoch}-last"
    fit(tmp_path, [cb], max_epochs=3)
    assert names(tmp_path / "ck") == ["epoch=2-last.ckpt"]
    assert cb.last_model_path == str(tmp_path / "ck" / "epoch=2-last.ckpt")


@pytest.mark.parametrize("monitor, kept", [("epoch", ["epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"]),
                                           ("step", ["epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"])])
def test_epoch_and_step_can_be_monitored_without_being_logged(tmp_path, monitor, kept):
    cb = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor=monitor, mode="max", save_top_k=2)
    fit(tmp_path, [cb], max_epochs=3)
    assert names(tmp_path / "ck") == kept
    assert float(cb.best_model_score) == (2 if monitor == "epoch" else 12)


def test_current_score_and_to_yaml_hold_the_ranking(tmp_path):
    cb = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="val_loss", save_top_k=2)
    fit(tmp_path, [cb], max_epochs=3)  # val_loss 0.5, 0.25, 0.75: the last candidate scored 0.75 and is not kept
    assert float(cb.current_score) == 0.25  # the latest that entered the top k
    cb.to_yaml()
    with open(tmp_path / "ck" / "best_k_models.yaml") as f:
        ranking = yaml.safe_load(f)
    assert ranking == {str(tmp_path / "ck" / "epoch=0-step=4.ckpt"): 0.5, str(tmp_path / "ck" / "epoch=1-step=8.ckpt"): 0.25}
    cb.to_yaml(tmp_path / "other.yaml")
    assert yaml.safe_load(open(tmp_path / "other.yaml")) == ranking
    assert float(cb.state_dict()["current_score"]) == 0.25


def test_train_time_interval_saves_when_that_much_training_time_passed(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(checkpoint_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))

    def ten_seconds():
        clock[0] += 10.0

    cb = ModelCheckpoint(dirpath=str(tmp_path / "ck"), filename="{step}", save_top_k=-1,
                         train_time_interval=timedelta(seconds=25))
    fit(tmp_path, [cb], module=Tiny(on_batch=ten_seconds), max_epochs=2, val=False)
    # 10 s a batch: due at 30 s (step 3), then 25 s after that at 60 s (step 6); no epoch-end saves
    assert names(tmp_path / "ck") == ["step=3.ckpt", "step=6.ckpt"]


def test_save_on_exception_leaves_the_state_training_stopped_in(tmp_path):
    cb = ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_on_exception=True, save_last=True)
    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path, [cb], module=Tiny(fail_at_batch=2), max_epochs=1)
    assert names(tmp_path / "ck") == ["epoch=0-step=2.ckpt", "last.ckpt"]
    ckpt = torch.load(tmp_path / "ck" / "epoch=0-step=2.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    resumed = fit(tmp_path, [ModelCheckpoint(dirpath=str(tmp_path / "ck2"))], max_epochs=1,
                  ckpt_path=str(tmp_path / "ck" / "epoch=0-step=2.ckpt"))
    assert resumed.global_step == 4


def test_without_save_on_exception_a_failed_fit_saves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        fit(tmp_path, [ModelCheckpoint(dirpath=str(tmp_path / "ck"))], module=Tiny(fail_at_batch=2), max_epochs=1)
    assert not os.path.exists(tmp_path / "ck") or names(tmp_path / "ck") == []


def test_save_last_link_points_at_the_best_file_of_the_same_save(tmp_path):
    cb = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="val_loss", save_last="link")
    fit(tmp_path, [cb], max_epochs=3)  # epoch 2 (0.75) is not better: last.ckpt is then a file of its own
    last = tmp_path / "ck" / "last.ckpt"
    assert not os.path.islink(last) and torch.load(last, weights_only=False)["global_step"] == 12
    cb2 = ModelCheckpoint(dirpath=str(tmp_path / "ck2"), monitor="val_loss", save_last="link")
    fit(tmp_path, [cb2], max_epochs=2)
    last = tmp_path / "ck2" / "last.ckpt"
    assert os.path.islink(last) and os.readlink(last) == "epoch=1-step=8.ckpt"
    assert names(tmp_path / "ck2") == ["epoch=1-step=8.ckpt", "last.ckpt"]
    assert torch.load(last, weights_only=False)["global_step"] == 8


def test_without_save_last_there_is_no_last_file_and_last_resumes_the_newest(tmp_path, capsys):
    folder = str(tmp_path / "ck")
    fit(tmp_path, [ModelCheckpoint(dirpath=folder)], max_epochs=1)
    assert names(folder) == ["epoch=0-step=4.ckpt"]
    trainer = fit(tmp_path, [ModelCheckpoint(dirpath=folder)], max_epochs=2, ckpt_path="last")
    assert trainer.global_step == 8
    assert "resuming from " + os.path.join(folder, "epoch=0-step=4.ckpt") in capsys.readouterr().out


def test_fast_dev_run_writes_no_checkpoint_and_does_not_fail(tmp_path):
    cb = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="val_loss", save_last=True, save_on_exception=True,
                         every_n_train_steps=1)
    trainer = surge.Trainer(default_root_dir=str(tmp_path), callbacks=[cb], fast_dev_run=True,
                            enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Tiny(), loader(), loader(16))
    assert trainer.global_step == 1
    assert not os.path.exists(tmp_path / "ck") or names(tmp_path / "ck") == []
    assert cb.best_model_path == "" and cb.last_model_path == ""


# ---------------------------------------------------------------- Lightning 2.6 behaviour (h-ckpt)
def test_without_a_monitor_only_all_none_or_the_newest_can_be_kept(tmp_path):
    with pytest.raises(MisconfigurationError, match=r"ModelCheckpoint\(save_top_k=3, monitor=None\) is not a valid"):
        ModelCheckpoint(dirpath=str(tmp_path), save_top_k=3)
    for k in (-1, 0, 1):
        ModelCheckpoint(dirpath=str(tmp_path), save_top_k=k)
    ModelCheckpoint(dirpath=str(tmp_path), monitor="val_loss", save_top_k=3)  # with a metric, any k


@pytest.mark.parametrize("k, kept", [(-1, ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt"]),
                                     (1, ["epoch=2-step=12.ckpt"])])
def test_without_a_monitor_nothing_is_ranked_and_the_newest_is_best(tmp_path, k, kept):
    cb = ModelCheckpoint(dirpath=str(tmp_path / "ck"), save_top_k=k, save_last=True)
    fit(tmp_path, [cb], max_epochs=3)
    assert names(tmp_path / "ck") == sorted(kept + ["last.ckpt"])
    assert cb.best_model_path == str(tmp_path / "ck" / "epoch=2-step=12.ckpt")
    assert cb.best_model_score is None and cb.best_k_models == {} and cb.kth_best_model_path == ""


def test_a_bad_mode_is_refused_in_lightnings_words():
    with pytest.raises(MisconfigurationError, match="`mode` can be .* but got sideways"):
        ModelCheckpoint(mode="sideways")


def test_a_checkpoint_callback_with_checkpointing_off_is_refused_in_lightnings_words(tmp_path):
    with pytest.raises(MisconfigurationError, match="`enable_checkpointing=False` but found `ModelCheckpoint`"):
        surge.Trainer(default_root_dir=str(tmp_path), enable_checkpointing=False, callbacks=[ModelCheckpoint()])


def test_current_score_keeps_the_logged_dtype_in_the_saved_state(tmp_path):
    cb = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="val_loss", save_top_k=-1)
    fit(tmp_path, [cb], max_epochs=2)  # val_loss 0.5, 0.25, logged as float32
    saved = [torch.load(p, weights_only=True)["callbacks"][cb.state_key]["current_score"]
             for p in sorted((tmp_path / "ck").iterdir())]
    assert [s.dtype for s in saved] == [torch.float32] * 2
    assert [s == v for s, v in zip(saved, [0.5, 0.25])] == [True, True]


def test_kth_best_is_a_settable_attribute_and_another_folder_restores_only_the_best_path(tmp_path):
    cb = ModelCheckpoint(dirpath=str(tmp_path / "a"), monitor="val_loss", save_top_k=2)
    assert cb.kth_best_model_path == "" and float(cb.kth_value) == float("inf")
    cb.kth_best_model_path, cb.kth_value = "x.ckpt", torch.tensor(2.5)
    cb.best_model_path, cb.last_model_path = "best.ckpt", "last.ckpt"
    state = cb.state_dict()
    assert state["kth_best_model_path"] == "x.ckpt" and state["kth_value"] == 2.5
    other = ModelCheckpoint(dirpath=str(tmp_path / "b"), monitor="val_loss", save_top_k=2)
    with pytest.warns(UserWarning, match="The dirpath has changed from"):
        other.load_state_dict(state)
    assert other.best_model_path == "best.ckpt"
    assert other.kth_best_model_path == "" and other.last_model_path == "" and other.best_model_score is None


def test_the_kth_best_follows_the_ranking_once_the_top_k_are_full(tmp_path):
    one = ModelCheckpoint(dirpath=str(tmp_path / "one"), monitor="val_loss", save_top_k=2)
    fit(tmp_path, [one], max_epochs=1)
    assert one.kth_best_model_path == ""  # one of two kept
    cb = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="val_loss", save_top_k=2)
    fit(tmp_path, [cb], max_epochs=3)  # val_loss 0.5, 0.25, 0.75 (0.75 does not enter)
    assert cb.kth_best_model_path.endswith("epoch=0-step=4.ckpt") and float(cb.kth_value) == 0.5


def test_hooks_take_lightnings_keyword_names_and_a_link_needs_a_local_folder(tmp_path):
    trainer = surge.Trainer(default_root_dir=str(tmp_path), logger=False)
    ModelCheckpoint(dirpath=str(tmp_path / "ck")).setup(trainer=trainer, pl_module=Tiny(), stage="fit")
    remote = ModelCheckpoint(dirpath="memory://somewhere", save_last="link")
    assert remote.dirpath == "memory://somewhere"
    with pytest.raises(ValueError, match="save_last='link'.* is only supported for local file paths"):
        remote.setup(trainer=trainer, pl_module=Tiny(), stage="fit")


def test_each_validation_inside_an_epoch_is_a_save(tmp_path):
    cb = ModelCheckpoint(dirpath=str(tmp_path / "ck"), monitor="val_loss", save_top_k=-1)
    fit(tmp_path, [cb], max_epochs=1, val_check_interval=0.5)  # 4 batches: validation after 2 and 4
    assert names(tmp_path / "ck") == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]


def test_a_resumed_run_keeps_the_checkpoint_it_resumed_from_among_its_top_k(tmp_path):
    folder = str(tmp_path / "ck")
    first = ModelCheckpoint(dirpath=folder, monitor="step", mode="max", save_top_k=2, every_n_train_steps=2)
    fit(tmp_path, [first], val=False, max_steps=5)
    assert names(folder) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt"]
    again = ModelCheckpoint(dirpath=folder, monitor="step", mode="max", save_top_k=2, every_n_train_steps=2)
    fit(tmp_path, [again], val=False, max_steps=8, ckpt_path=os.path.join(folder, "epoch=0-step=4.ckpt"))
    # step 2 drops out of the top 2; step 4, which fit resumed from, drops out too but stays on disk
    kept = sorted(os.path.basename(p) for p in again.best_k_models)
    assert len(kept) == 2 and all(int(n.split("step=")[1][:-5]) in (6, 8) for n in kept)
    assert names(folder) == sorted(kept + ["epoch=0-step=4.ckpt"])


def test_the_gathered_rank_states_travel_without_torch_save_and_come_back_equal(monkeypatch):
    from surge import resume

    own = {"rng": {"torch": torch.get_rng_state(), "more": [torch.tensor(1.5), torch.zeros(0, 3)]},
           "loader_state": {"order": (3, torch.arange(4)), "flags": torch.tensor([True, False])},
           "half": torch.ones(2, 2, dtype=torch.bfloat16), "other": "text"}
    packed = resume._pack_tensors(own)
    calls = []
    monkeypatch.setattr(torch, "save", lambda *a, **k: calls.append(a))
    import pickle

    back = resume._unpack_tensors(pickle.loads(pickle.dumps(packed)))  # what a gather of Python objects does
    assert calls == []  # no tensor was pickled (pickling one calls torch.save)
    assert torch.equal(back["rng"]["torch"], own["rng"]["torch"]) and back["rng"]["more"][0].item() == 1.5
    assert back["rng"]["more"][1].shape == (0, 3) and back["loader_state"]["order"][0] == 3
    assert torch.equal(back["loader_state"]["order"][1], torch.arange(4))
    assert back["loader_state"]["flags"].tolist() == [True, False] and back["half"].dtype == torch.bfloat16
    assert back["other"] == "text"
