"""profiler="simple" | "advanced" | "pytorch": run for real, check the report and the trace files."""
from __future__ import annotations

import glob
import json
import os

import pytest
import torch

import surge
from surge.demos.toy import ToyModel
from surge.profiler import AdvancedProfiler, PyTorchProfiler, SimpleProfiler
from surge.utils import MisconfigurationError


def fit(tmp_path, profiler, steps=6, **kw):
    t = surge.Trainer(default_root_dir=str(tmp_path), profiler=profiler, max_steps=steps, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, **kw)
    t.fit(ToyModel())
    return t


def test_simple_profiler_times_hooks_and_stages(tmp_path, capsys):
    t = fit(tmp_path, "simple")
    prof = t.profiler
    assert isinstance(prof, SimpleProfiler)
    for name in ("run_training_batch", "training_step", "backward", "optimizer_step", "on_train_batch_end"):
        assert len(prof.recorded[name]) == 6, name
    assert len(prof.recorded["on_fit_start"]) == 1
    batch, parts = sum(prof.recorded["run_training_batch"]), sum(prof.recorded["training_step"]) + \
        sum(prof.recorded["backward"]) + sum(prof.recorded["optimizer_step"])
    assert 0 < parts <= batch  # the stages are inside the batch
    out = capsys.readouterr().out
    assert "Profiler report (fit)" in out and "run_training_batch" in out


def test_simple_profiler_writes_report_file(tmp_path):
    fit(tmp_path, SimpleProfiler(dirpath=str(tmp_path / "prof"), filename="report"))
    text = (tmp_path / "prof" / "report.txt").read_text()
    assert "training_step" in text and "calls" in text


def test_advanced_profiler_reports_functions_per_action(tmp_path, capsys):
    t = fit(tmp_path, "advanced")
    assert isinstance(t.profiler, AdvancedProfiler)
    out = capsys.readouterr().out
    assert "Profile of action: training_step" in out and "Profile of action: backward" in out
    assert "training_step" in out.split("Profile of action: training_step")[1]  # ToyModel.training_step is in it


def test_pytorch_profiler_writes_a_trace_for_the_scheduled_steps(tmp_path, capsys):
    fit(tmp_path, "pytorch", steps=6)
    traces = glob.glob(str(tmp_path / "profiler" / "*.pt.trace.json"))
    assert len(traces) == 1  # wait=1, warmup=1, active=3, repeat=1: one cycle
    with open(traces[0]) as f:
        events = json.load(f)["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"run_training_batch", "training_step", "backward", "optimizer_step"} <= names
    steps = [e for e in events if e.get("name", "").startswith("ProfilerStep#")]
    assert len(steps) == 3
    assert "PyTorch profiler (fit)" in capsys.readouterr().out


def test_pytorch_profiler_trace_readable_by_tensorboard_plugin_layout(tmp_path):
    # TensorBoard's profile plugin reads <logdir>/<run>/*.pt.trace.json: the folder it is pointed at.
    fit(tmp_path, PyTorchProfiler(dirpath=str(tmp_path / "tb" / "run0"), wait=0, warmup=1, active=1), steps=3)
    assert glob.glob(str(tmp_path / "tb" / "run0" / "*.pt.trace.json"))


@pytest.mark.parametrize("bad", ["fast", 3, True])
def test_bad_profiler_argument(bad):
    with pytest.raises(MisconfigurationError, match="profiler=.*'simple', 'advanced', 'pytorch'"):
        surge.Trainer(profiler=bad)


def test_bad_pytorch_profiler_schedule():
    with pytest.raises(MisconfigurationError, match="active"):
        PyTorchProfiler(active=0)


def test_no_profiler_by_default():
    assert surge.Trainer(logger=False).profiler is None


def test_a_pass_through_profiler_is_no_profiler(tmp_path):
    from surge.profiler import PassThroughProfiler

    profiler = PassThroughProfiler()
    with profiler.profile("anything"):
        pass
    assert profiler.summary() == ""
    trainer = surge.Trainer(default_root_dir=tmp_path, profiler=profiler, logger=False, enable_progress_bar=False)
    assert trainer.profiler is None  # nothing is timed, at no cost per step
