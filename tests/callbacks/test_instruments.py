"""DeviceStatsMonitor, ThroughputMonitor (FLOPs, MFU, data-wait diagnosis), RichProgressBar, detect_anomaly."""
from __future__ import annotations

import csv
import io
import os
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import surge
from surge.callbacks import DeviceStatsMonitor, ThroughputMonitor
from surge.callbacks.throughput import device_peak_flops, matmul_dtype
from surge.loggers import CSVLogger
from surge.utils import SurgeError

IN, OUT, BATCH = 16, 32, 8


class Linear(surge.Module):
    """One bias-free Linear layer: FLOPs per batch by hand = forward 2*B*IN*OUT + weight grad 2*B*IN*OUT."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(IN, OUT, bias=False)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader(n=64, batch_size=BATCH):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, IN, generator=g), torch.randn(n, OUT, generator=g)),
                      batch_size=batch_size)


def trainer(tmp_path, callbacks, **kw):
    kw.setdefault("logger", CSVLogger(str(tmp_path), name="run"))
    return surge.Trainer(default_root_dir=str(tmp_path), callbacks=callbacks, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, **kw)


def read_csv(t) -> list[dict]:
    with open(os.path.join(t.log_dir, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def column(rows, key) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


# ---------------------------------------------------------------------- ThroughputMonitor
def test_throughput_flops_mfu_and_rates_are_written(tmp_path):
    peak = 1e9
    monitor = ThroughputMonitor(window=2, peak_flops=peak)
    t = trainer(tmp_path, [monitor], max_epochs=1, log_every_n_steps=100)
    t.fit(Linear(), loader(n=8 * BATCH))
    assert monitor.flops_per_batch == 2 * (2 * BATCH * IN * OUT)  # fwd + bwd (weight grad; x needs no grad)
    rows = read_csv(t)
    # 8 batches, the first untimed: windows end after batches 3, 5, 7 -> 3 rows
    bps = column(rows, "throughput/batches_per_sec")
    assert len(bps) == 3 and all(v > 0 for v in bps)
    sps, mfu = column(rows, "throughput/samples_per_sec"), column(rows, "throughput/mfu")
    flops = column(rows, "throughput/flops_per_sec")
    for b, s, m, fl in zip(bps, sps, mfu, flops):
        assert s == pytest.approx(b * BATCH)
        assert fl == pytest.approx(b * monitor.flops_per_batch)
        assert m == pytest.approx(fl / peak)
    assert column(rows, "throughput/total_flops_per_sec") == pytest.approx(flops)  # world size 1
    frac = column(rows, "time/data_wait_frac")
    assert len(frac) == 3 and all(0 <= v <= 1 for v in frac)


class GradientPenalty(Linear):
    """A step that calls torch.autograd.grad (a WGAN-GP style penalty on the input gradient)."""

    @staticmethod
    def loss(forward, x, y):
        x = x.requires_grad_(True)
        out = forward(x)
        (grad_x,) = torch.autograd.grad(out.sum(), x, create_graph=True)
        return F.mse_loss(out, y) + grad_x.pow(2).mean()

    def training_step(self, batch, batch_idx):
        return self.loss(self.layer, *batch)


def test_throughput_counts_flops_of_a_step_that_calls_autograd_grad(tmp_path):
    # torch's FlopCounterMode hooks every module's outputs to attribute FLOPs per module, and those hooks
    # fail inside torch.autograd.grad; the monitor counts totals only, so the run goes on.
    monitor = ThroughputMonitor(window=2)
    model = GradientPenalty()
    trainer(tmp_path, [monitor], max_epochs=1, logger=False).fit(model, loader(n=4 * BATCH))
    from torch.utils.flop_counter import FlopCounterMode

    x, y = next(iter(loader()))
    weight = model.layer.weight.detach().clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:  # the same step with no module: nothing to hook
        GradientPenalty.loss(lambda v: F.linear(v, weight), x.clone(), y).backward()
    assert monitor.flops_per_batch == counter.get_total_flops() > 2 * (2 * BATCH * IN * OUT)


class TokenBatches(Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return {"x": torch.randn(IN), "y": torch.randn(OUT), "num_tokens": 5}


class DictLinear(Linear):
    def training_step(self, batch, batch_idx):
        return F.mse_loss(self.layer(batch["x"]), batch["y"])


def test_throughput_tokens_from_num_tokens_key_and_user_fn(tmp_path):
    monitor = ThroughputMonitor(window=1, flops_per_batch=123.0)
    t = trainer(tmp_path, [monitor], max_epochs=1, logger=False)
    t.fit(DictLinear(), DataLoader(TokenBatches(), batch_size=4))
    m = monitor.last_metrics
    assert m["throughput/tokens_per_sec"] == pytest.approx(m["throughput/batches_per_sec"] * 4 * 5)  # collated: tensor sum
    assert m["throughput/flops_per_sec"] == pytest.approx(123.0 * m["throughput/batches_per_sec"])
    assert "throughput/mfu" not in m  # CPU: no peak known, none given

    monitor = ThroughputMonitor(window=1, tokens_fn=lambda b: 7, measure_flops=False)
    trainer(tmp_path, [monitor], max_epochs=1, logger=False).fit(Linear(), loader(n=24))
    m = monitor.last_metrics
    assert m["throughput/tokens_per_sec"] == pytest.approx(m["throughput/batches_per_sec"] * 7)
    assert "throughput/flops_per_sec" not in m


class SlowData(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        time.sleep(0.02)
        return torch.randn(IN), torch.randn(OUT)


def test_slow_dataloader_is_diagnosed_once_with_the_fix(tmp_path):
    monitor = ThroughputMonitor(window=2)
    t = trainer(tmp_path, [monitor], max_epochs=2, logger=CSVLogger(str(tmp_path), name="slow"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(Linear(), DataLoader(SlowData(), batch_size=1))
    advice = [w for w in caught if "waited for data" in str(w.message)]
    assert len(advice) == 1
    assert "num_workers" in str(advice[0].message)
    frac = column(read_csv(t), "time/data_wait_frac")
    assert frac and min(frac) > 0.5


class SlowStep(Linear):
    def training_step(self, batch, batch_idx):
        time.sleep(0.01)  # compute that dwarfs the fetch, even on a busy machine
        return super().training_step(batch, batch_idx)


def test_fast_dataloader_gives_no_warning(tmp_path):
    monitor = ThroughputMonitor(window=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, [monitor], max_epochs=1, logger=False).fit(SlowStep(), loader(n=40))
    assert not [w for w in caught if "waited for data" in str(w.message)]
    assert monitor.last_metrics["time/data_wait_frac"] < 0.5


def test_peak_table_and_precision_dtype():
    assert device_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert device_peak_flops("NVIDIA H100 PCIe", "bf16") == pytest.approx(756.5e12)
    assert device_peak_flops("NVIDIA H200", "tf32") == pytest.approx(494.7e12)
    assert device_peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == pytest.approx(19.5e12)
    assert device_peak_flops("NVIDIA L40S", "bf16") == pytest.approx(362.05e12)
    assert device_peak_flops("NVIDIA L4", "fp16") == pytest.approx(121e12)
    assert device_peak_flops("Tesla V100-SXM2-16GB", "bf16") is None
    assert device_peak_flops("Some CPU", "fp32") is None
    assert matmul_dtype("bf16-mixed") == "bf16" and matmul_dtype("16-mixed") == "fp16"
    assert matmul_dtype("64-true") is None


@pytest.mark.parametrize("kw", [{"window": 0}, {"flops_per_batch": -1}, {"peak_flops": 0}])
def test_throughput_bad_arguments(kw):
    with pytest.raises(surge.utils.MisconfigurationError):
        ThroughputMonitor(**kw)


# ---------------------------------------------------------------------- DeviceStatsMonitor
def test_device_stats_cpu_written_every_n_steps(tmp_path):
    pytest.importorskip("psutil")
    monitor = DeviceStatsMonitor(every_n_steps=3)
    t = trainer(tmp_path, [monitor], max_epochs=1, log_every_n_steps=100)
    t.fit(Linear(), loader(n=6 * BATCH))
    rows = read_csv(t)
    written = [r for r in rows if r.get("device/process_rss_gb")]
    assert [int(r["step"]) for r in written] == [3, 6]
    for r in written:
        assert 0 <= float(r["device/cpu_percent"]) <= 100 * (os.cpu_count() or 1)
        assert 0 < float(r["device/ram_used_percent"]) <= 100
        assert 0 < float(r["device/process_rss_gb"]) < 1024
    assert not any(k.startswith("device/gpu") for k in rows[0])  # CPU run: no GPU columns


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NVML path)")
def test_device_stats_gpu(tmp_path):
    monitor = DeviceStatsMonitor(every_n_steps=2)
    t = trainer(tmp_path, [monitor], max_epochs=1, accelerator="cuda", devices=1)
    t.fit(Linear(), loader())
    stats = monitor.last_stats
    assert stats["device/gpu_mem_peak_gb"] > 0 and stats["device/gpu_mem_reserved_gb"] > 0
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return
    assert 0 <= stats["device/gpu_util_percent"] <= 100
    assert stats["device/gpu_temp_c"] > 0 and stats["device/gpu_power_w"] > 0


# ---------------------------------------------------------------------- RichProgressBar
def test_rich_progress_bar_draws_metrics(tmp_path):
    pytest.importorskip("rich")
    from rich.console import Console

    from surge.callbacks import RichProgressBar

    out = io.StringIO()
    bar = RichProgressBar(max_refresh_per_second=1e6, console=Console(file=out, width=200, force_terminal=False))
    t = surge.Trainer(default_root_dir=str(tmp_path), callbacks=[bar], logger=False, enable_checkpointing=False,
                      enable_model_summary=False, max_epochs=2)

    class WithBar(Linear):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.log("shown", 1.5, prog_bar=True)
            return loss

    t.fit(WithBar(), loader(n=32))
    text = out.getvalue()
    assert "Epoch 1" in text and "4/4" in text and "shown: 1.5" in text
    assert [cb for cb in t.callbacks if isinstance(cb, surge.callbacks.ProgressBar)] == [bar]  # replaces tqdm


def test_rich_missing_gives_install_hint(monkeypatch):
    import builtins

    from surge.callbacks import rich_progress

    real_import = builtins.__import__

    def no_rich(name, *args, **kwargs):
        if name == "rich" or name.startswith("rich."):
            raise ImportError("no rich")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rich)
    with pytest.raises(ImportError, match="pip install rich"):
        rich_progress.RichProgressBar()


# ---------------------------------------------------------------------- detect_anomaly
class HookedInf(Linear):
    """The forward stays finite; the gradient of ``scale`` (only) becomes inf at global step 2."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def training_step(self, batch, batch_idx):
        x, y = batch
        s = self.scale * 1.0
        if self.trainer.global_step == 2:
            s.register_hook(lambda g: g * float("inf"))  # a single value: inf, never inf - inf
        return F.mse_loss(self.layer(x) * s, y)


def test_detect_anomaly_names_step_and_parameters(tmp_path):
    t = trainer(tmp_path, [], max_epochs=1, logger=False, detect_anomaly=True)
    with pytest.raises(SurgeError, match=r"non-finite gradients \(NaN or inf\) at global step 2 \(epoch 0, batch 2\) in 1 parameter\(s\): scale$"):
        t.fit(HookedInf(), loader())


def test_detect_anomaly_nan_in_backward_names_step(tmp_path):
    class NaNGrad(Linear):
        def training_step(self, batch, batch_idx):
            x, y = batch
            out = self.layer(x)
            if self.trainer.global_step == 1:
                out = torch.sqrt(out - out.detach() - 0.0)  # forward 0, backward 1/(2*sqrt(0)) * 0 -> nan
            return F.mse_loss(out, y)

    t = trainer(tmp_path, [], max_epochs=1, logger=False, detect_anomaly=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SurgeError, match=r"non-finite at global step 1 .*returned nan"):
            t.fit(NaNGrad(), loader())


def test_without_detect_anomaly_only_the_loss_is_caught_a_step_later(tmp_path):
    t = trainer(tmp_path, [], max_epochs=1, logger=False)
    with pytest.raises(SurgeError, match=r"the loss is (nan|inf|-inf) at global step 3"):
        t.fit(HookedInf(), loader())
