"""Faults in one process: NaN losses, out of memory, disk full while checkpointing, failing loggers and callbacks."""
import errno
import os
import random
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import surge
import surge.checkpoint as checkpoint_mod
from surge.checkpoint import CheckpointError, load_checkpoint
from surge.demos.toy import ToyModel, ToyDataset
from surge.faults import OutOfMemoryError
from surge.utils import MisconfigurationError, SurgeError


def quiet(tmp_path, **kwargs):
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return surge.Trainer(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, default_root_dir=tmp_path, **kwargs)


def loader(n=64, batch_size=4):
    return DataLoader(ToyDataset(32, n), batch_size=batch_size)


class NanAt(ToyModel):
    """Returns a NaN loss at the given batches (or ``None`` there, for the reference run)."""

    def __init__(self, bad=(2, 5), none_instead=False):
        super().__init__()
        torch.manual_seed(0)
        self.layer.reset_parameters()
        self.bad, self.none_instead = set(bad), none_instead

    def training_step(self, batch, batch_idx):
        loss = self(batch).sum()
        if batch_idx in self.bad:
            return None if self.none_instead else loss * float("nan")
        return loss


# ---------------------------------------------------------------------- non-finite loss
def test_nan_loss_stops_by_default_with_step_and_batch(tmp_path):
    with pytest.raises(SurgeError, match=r"the loss is nan at global step 2 \(epoch 0, batch 2\).*on_nan='skip'"):
        quiet(tmp_path, max_epochs=1).fit(NanAt(), loader())


def test_nan_skip_drops_the_update_counts_and_logs_it(tmp_path):
    class Keep(surge.loggers.Logger):
        def __init__(self):
            super().__init__(None)
            self.rows = []

        def log_metrics(self, metrics, step):
            self.rows.append(dict(metrics))

    keep = Keep()
    model = NanAt()
    trainer = quiet(tmp_path, max_epochs=1, on_nan="skip", logger=keep, log_every_n_steps=1)
    with pytest.warns(UserWarning, match=r"not finite at global step 2 \(epoch 0, batch 2\); skipped"):
        trainer.fit(model, loader())
    assert trainer._nan.skipped == 2
    assert trainer.global_step == 16 - 2  # optimizer steps actually taken
    assert max(r.get("train/nan_skipped", 0) for r in keep.rows) == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # The same as a run that never saw those batches' gradients.
    reference = NanAt(none_instead=True)
    quiet(tmp_path, max_epochs=1).fit(reference, loader())
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


def test_nan_skip_inside_an_accumulation_window_drops_the_window(tmp_path):
    model = NanAt(bad=(3,))
    trainer = quiet(tmp_path, max_epochs=1, on_nan="skip", accumulate_grad_batches=2)
    with pytest.warns(UserWarning, match="skipped"):
        trainer.fit(model, loader(32))
    assert trainer.global_step == 3  # 4 windows of 2, one dropped
    assert all(torch.isfinite(p).all() for p in model.parameters())


class Noisy(surge.Module):
    """Dropout, plus noise from Python's and NumPy's generators: every step draws from all three streams."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 2))

    def training_step(self, batch, batch_idx):
        noise = 1.0 + 0.01 * random.random() + 0.01 * float(np.random.rand())
        return self.net(batch).pow(2).mean() * noise

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _noisy_fit(tmp_path, batches, **kwargs):
    """``Noisy`` trained one epoch on ``batches`` (a list, in order) from the same seeds; with the next
    number of each random stream after fit."""
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    model = Noisy()
    trainer = quiet(tmp_path, max_epochs=1, **kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not finite.*")
        trainer.fit(model, DataLoader(batches, batch_size=None))
    return trainer, model, (torch.rand(1).item(), random.random(), float(np.random.rand()))


@pytest.mark.parametrize("accumulate, bad, dropped", [
    (1, (2, 5), (2, 5)),
    # the first micro-batch of window (2, 3) and the second of window (6, 7): both windows go, whole
    (2, (2, 7), (2, 3, 6, 7)),
    (3, (4,), (3, 4, 5)),
])
def test_nan_skip_is_a_run_that_never_saw_the_dropped_windows(tmp_path, accumulate, bad, dropped):
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(4, 32, generator=g) for _ in range(12)]
    poisoned = [b * float("nan") if i in bad else b for i, b in enumerate(batches)]
    trainer, model, streams = _noisy_fit(tmp_path, poisoned, on_nan="skip", accumulate_grad_batches=accumulate)
    clean = [b for i, b in enumerate(batches) if i not in dropped]
    reference_trainer, reference, reference_streams = _noisy_fit(tmp_path, clean, accumulate_grad_batches=accumulate)
    assert trainer.global_step == reference_trainer.global_step == len(clean) // accumulate
    assert trainer._nan.skipped == len(bad)
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)  # bit for bit: the dropped windows' random numbers were given back
    assert streams == reference_streams  # torch, Python and NumPy continue where the reference's do


def test_on_nan_is_checked():
    with pytest.raises(MisconfigurationError, match=r"on_nan must be one of 'raise', 'skip', got 'ignore'"):
        surge.Trainer(on_nan="ignore")


# ---------------------------------------------------------------------- out of memory
class OomAt(ToyModel):
    def __init__(self, where="training_step", step=3):
        super().__init__()
        self.where, self.step = where, step

    def _maybe(self, name):
        if name == self.where and self.trainer.global_step >= self.step:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def training_step(self, batch, batch_idx):
        self._maybe("training_step")
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self._maybe("validation_step")
        return super().validation_step(batch, batch_idx)


@pytest.mark.parametrize("where", ["training_step", "validation_step"])
def test_out_of_memory_says_where_how_big_and_what_to_try(tmp_path, where):
    trainer = quiet(tmp_path, max_epochs=1, limit_val_batches=2)
    with pytest.raises(torch.OutOfMemoryError) as info:  # still torch's type, for users' except clauses
        trainer.fit(OomAt(where), loader(), loader(16))
    err = info.value
    assert isinstance(err, OutOfMemoryError) and isinstance(err, SurgeError)
    text = str(err)
    assert where in text and "batch of 4" in text and "memory in use" in text
    assert ("global step 3" in text) if where == "training_step" else ("validate" in text or "fit" in text)
    for advice in ("accumulate_grad_batches", "precision", "fsdp", "Tried to allocate 20.00 GiB"):
        assert advice in text
    assert isinstance(err.__cause__, torch.OutOfMemoryError)


# ---------------------------------------------------------------------- disk full / no permission
def _fit_with_checkpoints(tmp_path, every=2, steps=8):
    ckpt = surge.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=every, save_top_k=-1,
                                           save_last=True)
    trainer = quiet(tmp_path, max_steps=steps, callbacks=[ckpt], enable_checkpointing=True)
    return trainer, ckpt


@pytest.mark.parametrize("fail_in", ["torch.save", "os.replace"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_disk_full_or_no_permission_keeps_previous_checkpoints(tmp_path, monkeypatch, fail_in, code):
    trainer, ckpt = _fit_with_checkpoints(tmp_path)
    real_save, real_replace, calls = torch.save, os.replace, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:  # the first save (the step file and last.ckpt) works, then the disk is "full"
            raise OSError(code, os.strerror(code))
        return (real_save if fail_in == "torch.save" else real_replace)(*args, **kwargs)

    if fail_in == "torch.save":
        monkeypatch.setattr(checkpoint_mod.torch, "save", failing)
    else:
        monkeypatch.setattr(checkpoint_mod.os, "replace", failing)
    model = ToyModel()
    with pytest.raises(CheckpointError, match=rf"could not write checkpoint '.*step=4\.ckpt'.*{os.strerror(code)}"
                                              r".*previous checkpoints are intact"):
        trainer.fit(model, loader())
    monkeypatch.undo()
    files = sorted(os.listdir(tmp_path / "ckpt"))
    assert files == ["epoch=0-step=2.ckpt", "last.ckpt"]  # no temporary file left, nothing half-written
    first = load_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert first["global_step"] == 2
    # Training state is consistent: a new run resumes from the intact checkpoint and finishes.
    trainer2, _ = _fit_with_checkpoints(tmp_path)
    trainer2.fit(ToyModel(), loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert trainer2.global_step == 8


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_a_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="could not write checkpoint"):
            checkpoint_mod.save_checkpoint({"state_dict": {}}, str(folder / "x.ckpt"))
    finally:
        folder.chmod(0o700)


FSIZE_SCRIPT = r'''
import os, resource, signal, sys
import torch
from torch.utils.data import DataLoader
import surge
from surge.demos.toy import ToyModel, ToyDataset

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that a write past the limit fails with EFBIG, not a kill


class LimitAfterFirstSave(surge.callbacks.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 3:  # after the first checkpoint (step 2): the "disk" takes only tiny files now
            resource.setrlimit(resource.RLIMIT_FSIZE, (512, resource.RLIM_INFINITY))


ckpt = surge.callbacks.ModelCheckpoint(dirpath=sys.argv[1], every_n_train_steps=2, save_top_k=-1, save_last=True)
trainer = surge.Trainer(accelerator="cpu", max_steps=8, callbacks=[LimitAfterFirstSave(), ckpt], logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
trainer.fit(ToyModel(), DataLoader(ToyDataset(32, 64), batch_size=4))
'''


def test_file_size_limit_while_checkpointing(tmp_path):
    script = tmp_path / "fsize.py"
    script.write_text(FSIZE_SCRIPT)
    out = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "CheckpointWriteError: could not write checkpoint" in proc.stderr and "step=4.ckpt'" in proc.stderr
    assert "File too large" in proc.stderr
    assert sorted(os.listdir(out)) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert load_checkpoint(out / "last.ckpt")["global_step"] == 2


# ---------------------------------------------------------------------- loggers and callbacks
class Broken(surge.loggers.Logger):
    def __init__(self):
        super().__init__(None)
        self.calls = 0

    def log_metrics(self, metrics, step):
        self.calls += 1
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failing_logger_warns_once_and_training_continues(tmp_path):
    broken = Broken()
    trainer = quiet(tmp_path, max_steps=10, logger=broken, log_every_n_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(ToyModel(), loader())
    relevant = [w for w in caught if "logger Broken.log_metrics failed" in str(w.message)]
    assert len(relevant) == 1 and "No space left" in str(relevant[0].message)
    assert broken.calls == 1 and trainer.global_step == 10


def test_a_logger_whose_folder_is_removed_mid_run_does_not_stop_training(tmp_path):
    import shutil

    from surge.loggers import CSVLogger

    logger = CSVLogger(tmp_path / "logs")

    class RemoveLogs(surge.callbacks.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                shutil.rmtree(tmp_path / "logs")
                (tmp_path / "logs").write_text("a file where the folder was")  # the logger cannot recreate it

    trainer = quiet(tmp_path, max_steps=10, logger=logger, log_every_n_steps=1, callbacks=[RemoveLogs()])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(ToyModel(), loader())
    assert trainer.global_step == 10
    assert len([w for w in caught if "logger CSVLogger" in str(w.message)]) <= 1


class Boom(surge.callbacks.Callback):
    def __init__(self, hook):
        self.hook = hook

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.hook == "on_train_batch_end" and batch_idx == 2:
            raise RuntimeError("boom")

    def on_train_epoch_end(self, trainer, module):
        if self.hook == "on_train_epoch_end":
            raise RuntimeError("boom")


@pytest.mark.parametrize("hook", ["on_train_batch_end", "on_train_epoch_end"])
def test_a_raising_callback_is_named(tmp_path, hook):
    with pytest.raises(RuntimeError, match="boom") as info:
        quiet(tmp_path, max_epochs=1, callbacks=[Boom(hook)]).fit(ToyModel(), loader())
    assert f"(raised by callback Boom.{hook})" in info.value.__notes__


def test_the_user_sees_the_callback_name_in_the_traceback(tmp_path):
    script = tmp_path / "cb.py"
    script.write_text(
        "import surge\nfrom torch.utils.data import DataLoader\nfrom surge.demos.toy import ToyModel, ToyDataset\n"
        "class Exploding(surge.callbacks.Callback):\n"
        "    def on_train_batch_start(self, trainer, module, batch, batch_idx):\n"
        "        raise ValueError('bad callback')\n"
        "surge.Trainer(accelerator='cpu', max_steps=2, logger=False, enable_progress_bar=False, callbacks=[Exploding()])"
        ".fit(ToyModel(), DataLoader(ToyDataset(32, 8), batch_size=4))\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1
    assert "ValueError: bad callback" in proc.stderr
    assert "(raised by callback Exploding.on_train_batch_start)" in proc.stderr
