"""The tuner: the learning-rate range test and the batch-size search, checked against what they find.

The range test runs on least squares with SGD, where the step size that diverges is known (2 over the
Hessian's largest eigenvalue); the batch-size search runs against a memory limit the test sets, once as
a module that raises torch's own OutOfMemoryError above a size, once under a real address-space limit.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.callbacks import BatchSizeFinder, Callback, LearningRateFinder
from surge.tuner import LRFinder, Tuner, get_hparam, has_hparam, set_hparam
from surge.utils import MisconfigurationError

from launch_env import child_env

QUIET = dict(enable_progress_bar=False, logger=False, enable_checkpointing=False, enable_model_summary=False)


def regression(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 1, generator=g)
    return TensorDataset(x, x @ w + 0.01 * torch.randn(n, 1, generator=g))


class LeastSquares(surge.Module):
    """MSE on x ~ N(0, I): the Hessian is 2I, so SGD converges fastest at lr 0.5 and diverges above 1."""

    def __init__(self, lr=1e-3, batch_size=16):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(8, 1)
        self.seen_lrs, self.seen_batches = [], []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen_batches.append(len(x))
        return F.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        self.seen_batches.append(len(batch[0]))

    def test_step(self, batch, batch_idx):
        self.seen_batches.append(len(batch[0]))

    def predict_step(self, batch, batch_idx):
        self.seen_batches.append(len(batch[0]))
        return self.net(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)

    def train_dataloader(self):
        return DataLoader(regression(), batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(regression(64, seed=1), batch_size=self.hparams.batch_size)

    test_dataloader = predict_dataloader = val_dataloader


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------- learning rate
def test_suggestion_on_least_squares_lands_in_the_right_decade():
    class PlainSGD(LeastSquares):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    model = PlainSGD(batch_size=64)
    trainer = surge.Trainer(max_epochs=1, **QUIET)
    finder = Tuner(trainer).lr_find(model, num_training=100, max_lr=10)
    assert isinstance(finder, LRFinder)
    lrs, losses = finder.results["lr"], finder.results["loss"]
    ratio = lrs[1] / lrs[0]
    assert lrs[0] == pytest.approx(1e-8) and all(b / a == pytest.approx(ratio) for a, b in zip(lrs, lrs[1:]))
    assert ratio == pytest.approx(1e9 ** (1 / 99))  # the 100-point grid from min_lr to max_lr
    # Plain SGD diverges above lr 1: the smoothed loss passes 4x its best soon after, and the test stops there.
    assert len(losses) == len(lrs) < 100 and 1 < lrs[-1] < 10
    assert losses[-1] > 4 * min(losses)
    suggested = finder.suggestion()
    assert 0.02 <= suggested <= 0.5, suggested  # the best step is 0.5; the suggestion is the decade below it
    assert model.hparams.lr == suggested  # update_attr=True is the Tuner's default


def test_the_run_is_put_back_after_the_test():
    model = LeastSquares()
    before = snapshot(model)
    trainer = surge.Trainer(max_epochs=1, **QUIET)
    callbacks = list(trainer.callbacks)
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    Tuner(trainer).lr_find(model, num_training=20, update_attr=False)
    assert torch.equal(torch.rand(3), expected_draw)  # the random state is as before
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.global_step == 0 and trainer.current_epoch == 0
    assert trainer.callbacks == callbacks  # the finder is gone again
    assert model.hparams.lr == 1e-3  # update_attr=False
    assert len(model.seen_batches) == 20  # 20 steps ran, and nothing else (the Tuner ends fit after the test)


def test_fit_after_the_callback_trains_at_the_suggestion_from_the_start():
    class Watch(Callback):
        def __init__(self):
            self.lrs = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    model, watch = LeastSquares(), Watch()
    finder = LearningRateFinder(num_training_steps=40, max_lr=0.5)
    trainer = surge.Trainer(max_steps=10, limit_val_batches=0, callbacks=[finder, watch], **QUIET)
    before = snapshot(model)
    trainer.fit(model)
    suggested = finder.optimal_lr.suggestion()
    assert watch.lrs == [suggested] * 10  # the optimizer was built again at the new rate
    assert trainer.global_step == 10  # the test's steps do not count
    assert len(model.seen_batches) == 40 + 10
    assert any(not torch.equal(before[k], v) for k, v in snapshot(model).items())


def test_linear_mode_spacing_and_early_stop_off():
    model = LeastSquares()
    trainer = surge.Trainer(max_epochs=1, **QUIET)
    finder = Tuner(trainer).lr_find(model, min_lr=0.01, max_lr=0.1, num_training=11, mode="linear",
                                   early_stop_threshold=None, update_attr=False)
    assert finder.results["lr"] == pytest.approx([0.01 + 0.009 * k for k in range(11)])


def test_a_nan_loss_ends_the_test_and_is_left_out_of_the_suggestion():
    finder = LRFinder("linear", 0.0001, 1.0, 5)
    finder.results = {"lr": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
                      "loss": [5.0, 4.0, 1.0, 0.9, 0.85, float("nan"), float("inf")]}
    # central differences over the finite points: -10, -20, -15.5, -0.75, -0.5
    assert finder.suggestion(skip_begin=0, skip_end=0) == 0.2
    assert LRFinder("linear", 0.1, 1.0, 5).suggestion() is None  # no points


def test_plot_marks_the_suggestion():
    import matplotlib

    matplotlib.use("Agg")
    model = LeastSquares()
    finder = Tuner(surge.Trainer(max_epochs=1, **QUIET)).lr_find(model, num_training=30, update_attr=False)
    fig = finder.plot(suggest=True)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    curve, dot = ax.lines
    assert list(curve.get_xdata()) == finder.results["lr"]
    assert dot.get_xdata()[0] == finder.suggestion() and dot.get_color() == "red"


def test_lr_attribute_lookup_and_errors():
    class NoLr(LeastSquares):
        def __init__(self):
            super().__init__()
            del self.hparams["lr"]
            self.my_lr = 0.01

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.my_lr)

    trainer = surge.Trainer(max_epochs=1, **QUIET)
    with pytest.raises(AttributeError, match="lr.*learning_rate.*attr_name"):
        Tuner(trainer).lr_find(NoLr(), num_training=5)
    with pytest.raises(AttributeError, match="nope"):
        Tuner(trainer).lr_find(NoLr(), num_training=5, attr_name="nope")
    model = NoLr()
    finder = Tuner(trainer).lr_find(model, num_training=30, attr_name="my_lr")
    assert model.my_lr == finder.suggestion()
    with pytest.raises(MisconfigurationError, match="method='fit'"):
        Tuner(trainer).lr_find(model, method="test")
    with pytest.raises(ValueError, match="already configured with a `LearningRateFinder`"):
        Tuner(surge.Trainer(callbacks=[LearningRateFinder()], **QUIET)).lr_find(model)
    with pytest.raises(ValueError, match="mode"):
        LearningRateFinder(mode="cosine")


def test_fast_dev_run_skips_both_finders():
    trainer = surge.Trainer(fast_dev_run=True, **QUIET)
    with pytest.warns(UserWarning, match="Skipping learning rate finder"):
        assert Tuner(trainer).lr_find(LeastSquares()) is None
    with pytest.warns(UserWarning, match="Skipping batch size scaler"):
        assert Tuner(trainer).scale_batch_size(LeastSquares()) is None


def test_the_old_trainer_flags_point_at_the_tuner():
    with pytest.raises(MisconfigurationError, match=r"auto_lr_find=True.*Tuner\(trainer\).lr_find"):
        surge.Trainer(auto_lr_find=True)
    with pytest.raises(MisconfigurationError, match=r"auto_scale_batch_size='power'.*scale_batch_size"):
        surge.Trainer(auto_scale_batch_size="power")
    with pytest.warns(DeprecationWarning, match="auto_lr_find"):
        surge.Trainer(auto_lr_find=False, **QUIET)


# ---------------------------------------------------------------------------- batch size
class Limited(LeastSquares):
    """Raises torch's OutOfMemoryError for a batch larger than ``fits``, as a GPU would."""

    fits = 40

    def training_step(self, batch, batch_idx):
        if len(batch[0]) > self.fits:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(batch[0])} units")
        return super().training_step(batch, batch_idx)

    def test_step(self, batch, batch_idx):
        if len(batch[0]) > self.fits:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return super().test_step(batch, batch_idx)


def test_power_mode_keeps_the_last_size_that_fitted():
    model = Limited()
    before = snapshot(model)
    trainer = surge.Trainer(max_epochs=1, **QUIET)
    assert Tuner(trainer).scale_batch_size(model, steps_per_trial=2) == 32
    assert model.hparams.batch_size == 32
    assert all(torch.equal(v, snapshot(model)[k]) for k, v in before.items())
    assert trainer.global_step == 0
    # 2, 4, 8, 16, 32 ran two steps each; 64 failed at its first
    assert model.seen_batches == [2, 2, 4, 4, 8, 8, 16, 16, 32, 32]


def test_binsearch_finds_the_limit_and_takes_the_margin_off():
    model = Limited()
    trainer = surge.Trainer(max_epochs=1, **QUIET)
    assert Tuner(trainer).scale_batch_size(model, mode="binsearch", steps_per_trial=1, margin=0.0) == 40
    model = Limited()
    assert Tuner(trainer).scale_batch_size(model, mode="binsearch", steps_per_trial=1) == 38  # int(40 * 0.95)
    assert model.hparams.batch_size == 38



def test_the_search_collects_only_what_its_trials_made_and_leaves_gc_as_it_found_it(monkeypatch):
    import gc

    counts, collect = [], gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: counts.append(gc.get_freeze_count()) or collect(*a))
    before = gc.get_freeze_count()
    assert before == 0
    trainer = surge.Trainer(max_epochs=1, **QUIET)
    assert Tuner(trainer).scale_batch_size(Limited(), mode="binsearch", steps_per_trial=1, margin=0.0) == 40
    # every collection between trials ran with the older objects frozen; afterwards nothing is frozen
    assert counts and min(counts) > 0 and gc.get_freeze_count() == 0
    # a program that froze objects itself keeps them frozen
    gc.freeze()
    try:
        assert Tuner(trainer).scale_batch_size(Limited(), steps_per_trial=1) == 32
        assert gc.get_freeze_count() > 0  # (the count itself drops as frozen objects are freed by refcount)
    finally:
        gc.unfreeze()

def test_growth_stops_at_the_dataset_max_val_and_max_trials():
    model = LeastSquares()
    trainer = surge.Trainer(max_epochs=1, **QUIET)
    assert Tuner(trainer).scale_batch_size(model, steps_per_trial=1) == 512  # the whole dataset in one batch
    assert Tuner(trainer).scale_batch_size(LeastSquares(), steps_per_trial=1, max_val=100) == 100
    assert Tuner(trainer).scale_batch_size(LeastSquares(), steps_per_trial=1, max_trials=3) == 8  # 2, 4, 8


def test_callback_in_fit_trains_with_the_size_found():
    model = Limited()
    finder = BatchSizeFinder(steps_per_trial=1)
    trainer = surge.Trainer(max_steps=3, limit_val_batches=0, callbacks=[finder], **QUIET)
    trainer.fit(model)
    assert finder.optimal_batch_size == 32
    assert model.seen_batches[-3:] == [32, 32, 32] and trainer.global_step == 3


def test_datamodule_attribute_and_the_test_stage():
    class Data(surge.DataModule):
        def __init__(self):
            super().__init__()
            self.batch_size = 2

        def test_dataloader(self):
            return DataLoader(regression(256), batch_size=self.batch_size)

    model, dm = Limited(), Data()
    del model.hparams["batch_size"]
    trainer = surge.Trainer(**QUIET)
    assert Tuner(trainer).scale_batch_size(model, datamodule=dm, method="test", steps_per_trial=1) == 32
    assert dm.batch_size == 32
    # As a callback, the test that follows the search reads batches of the size found.
    model.seen_batches.clear()
    trainer = surge.Trainer(callbacks=[BatchSizeFinder(steps_per_trial=1)], **QUIET)
    trainer.test(model, datamodule=dm, verbose=False)
    assert model.seen_batches[-1] == 32 and model.seen_batches[-8:] == [32] * 8  # 256 samples


def test_validate_and_predict_stages():
    trainer = surge.Trainer(**QUIET)
    assert Tuner(trainer).scale_batch_size(LeastSquares(), method="validate", steps_per_trial=1) == 64
    assert Tuner(trainer).scale_batch_size(LeastSquares(), method="predict", steps_per_trial=1) == 64


def test_what_the_batch_size_finder_refuses():
    trainer = surge.Trainer(**QUIET)
    loader = DataLoader(regression(), batch_size=4)
    with pytest.raises(MisconfigurationError, match="dataloaders passed directly"):
        Tuner(trainer).scale_batch_size(LeastSquares(), train_dataloaders=loader)
    with pytest.raises(MisconfigurationError, match="Field nope not found"):
        Tuner(trainer).scale_batch_size(LeastSquares(), batch_arg_name="nope")
    with pytest.raises(MisconfigurationError, match="`dataloaders` argument should be None"):
        Tuner(trainer).scale_batch_size(LeastSquares(), dataloaders=loader)
    with pytest.raises(ValueError, match="method 'train' is invalid"):
        Tuner(trainer).scale_batch_size(LeastSquares(), method="train")
    with pytest.raises(ValueError, match="distributed"):
        Tuner(surge.Trainer(accelerator="cpu", devices=2, strategy="ddp", **QUIET)).scale_batch_size(LeastSquares())
    with pytest.raises(MisconfigurationError, match="margin"):
        BatchSizeFinder(margin=1.0)

    class Broken(LeastSquares):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("not a memory problem")

    with pytest.raises(RuntimeError, match="not a memory problem"):  # only running out of memory is caught
        Tuner(trainer).scale_batch_size(Broken())


def test_hparam_lookup_order():
    model = LeastSquares()
    assert has_hparam(model, "lr") and get_hparam(model, "lr") == 1e-3
    model.lr = 0.5  # an attribute wins over hparams
    assert get_hparam(model, "lr") == 0.5
    set_hparam(model, "lr", 0.1)  # both are written
    assert model.lr == 0.1 and model.hparams.lr == 0.1
    assert not has_hparam(model, "nothing")


REAL_LIMIT = textwrap.dedent('''
    import resource, sys
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    import surge
    from surge.tuner import Tuner

    class Wide(surge.Module):  # about 1 MiB of activations and gradients per sample
        def __init__(self):
            super().__init__()
            self.batch_size = 2
            self.inp, self.out = torch.nn.Linear(4, 1 << 16), torch.nn.Linear(1 << 16, 1)
            self.ran = []
        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.out(torch.relu(self.inp(x))), y)
        def on_train_batch_end(self, outputs, batch, batch_idx):
            self.ran.append(len(batch[0]))  # forward, backward and optimizer step all fitted
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=1e-3)
        def train_dataloader(self):
            return DataLoader(TensorDataset(torch.randn(4096, 4), torch.randn(4096, 1)), batch_size=self.batch_size)

    model = Wide()
    trainer = surge.Trainer(max_epochs=1, enable_progress_bar=False, logger=False, enable_checkpointing=False,
                            enable_model_summary=False)
    in_use = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    limit = in_use + 300 * 2 ** 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    found = Tuner(trainer).scale_batch_size(model, mode=sys.argv[1], steps_per_trial=1, max_trials=20)
    print("found", found, "ran", max(model.ran))
''')


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_a_real_cpu_memory_limit_drives_the_search(tmp_path):
    script = tmp_path / "wide.py"
    script.write_text(REAL_LIMIT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), "power"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last[0] == "found", proc.stdout[-2000:]
    found, ran = int(last[1]), int(last[3])
    # 300 MiB over what the process used: the search stops between 2 and 4096 (the dataset), on a size that
    # ran, and the next doubling ran out of memory for real.
    assert 2 < found < 4096 and found == ran and (found & (found - 1)) == 0
    assert "ran out of memory" in proc.stdout + proc.stderr


DDP_SCRIPT = textwrap.dedent('''
    import os, sys
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    import surge
    from surge.tuner import Tuner

    class Net(surge.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lr = 1e-3
            self.net = torch.nn.Linear(8, 1)
        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    data = TensorDataset(x, x @ torch.randn(8, 1, generator=g))
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = surge.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    finder = Tuner(trainer).lr_find(model, DataLoader(data, batch_size=32, shuffle=True), num_training=40)
    same = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    torch.save({"lr": finder.results["lr"], "loss": finder.results["loss"], "model_lr": model.lr,
                "weights_back": same, "step": trainer.global_step},
               os.path.join(sys.argv[1], f"rank{trainer.global_rank}.pt"))
''')


def test_ddp_ranks_record_one_curve_and_agree_on_the_suggestion(tmp_path):
    script = tmp_path / "ddp_lr_find.py"
    script.write_text(DDP_SCRIPT)
    env = child_env()
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert len(r0["loss"]) == 40 and r0["loss"] == r1["loss"] and r0["lr"] == r1["lr"]
    assert r0["model_lr"] == r1["model_lr"] != 1e-3
    assert r0["weights_back"] and r1["weights_back"] and r0["step"] == r1["step"] == 0


def test_min_steps_does_not_hold_back_the_divergence_stop():
    class PlainSGD(LeastSquares):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    trainer = surge.Trainer(max_epochs=1, min_steps=500, **QUIET)
    finder = Tuner(trainer).lr_find(PlainSGD(batch_size=64), num_training=100, max_lr=10)
    assert len(finder.results["lr"]) < 100 and trainer.min_steps == 500
