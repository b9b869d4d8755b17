"""surge's checks on a CUDA GPU, as plain functions: pytest collects them (tests/test_precision_gpu.py) and
``python tests/gpu_checks.py`` runs them without pytest (a GPU machine for a few minutes may have no pytest).

Each check raises AssertionError (or anything else) on failure and ``Skip`` when it cannot apply here.
The runner prints one line per check (``PASS`` / ``FAIL`` / ``SKIP``), bounds each with an alarm, and with
``--json PATH`` rewrites PATH after every check, so a run killed from outside still leaves what it had.
Without CUDA it reports every check as "needs CUDA" and exits 0, at once: the CUDA driver is asked through
benchmarks/cuda_probe.py before torch and surge are imported, and the names of the checks are read from
this file's source (``list_check_names``), so nothing heavy is imported on a machine without a GPU.

Written in sessions without a GPU: not run on one yet (docs/benchmarks.md, "GPU").

Usage: python tests/gpu_checks.py [--json PATH] [-k SUBSTRING] [--check-timeout 120]
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import os
import signal
import sys
import time
import traceback
import warnings

PRECISIONS = ["32-true", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true"]


def list_check_names() -> list:
    """The names CHECKS will have, in its order, read from this file's source without importing anything:
    one ``precision_<p>`` per PRECISIONS entry, then every other ``check_*`` function as defined."""
    with open(__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = [f"precision_{p}" for p in PRECISIONS]
    names += [node.name[len("check_"):] for node in tree.body
              if isinstance(node, ast.FunctionDef) and node.name.startswith("check_") and node.name != "check_precision"]
    return names


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the results here (rewritten after every check)")
    p.add_argument("-k", default="", help="run only the checks whose name contains this")
    p.add_argument("--check-timeout", type=int, default=120, help="seconds one check may take")
    return p.parse_args(argv)


def needs_cuda_report(names) -> dict:
    return {"part": "tests", "started": True, "pid": os.getpid(), "status": "needs CUDA", "device": "no CUDA device",
            "checks": [{"name": n, "status": "needs CUDA", "detail": "", "seconds": 0.0} for n in names]}


if __name__ == "__main__":  # before torch's and surge's imports (seconds): without CUDA this is done at once
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benchmarks"))
    from cuda_probe import exit_if_no_cuda

    _args = parse_args()
    _names = [n for n in list_check_names() if _args.k in n]
    exit_if_no_cuda("gpu_checks.py", _args.json, needs_cuda_report(_names),
                    f"runs surge's checks on a CUDA GPU; the {len(_names)} checks were not run")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from surge import Trainer  # noqa: E402
from surge.demos.toy import ToyDataset, ToyModel  # noqa: E402


class Skip(Exception):
    """The check does not apply on this machine (the reason is the message)."""


def make_trainer(**kwargs):
    base = dict(accelerator="cuda", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    base.update(kwargs)
    return Trainer(**base)


class Recorder(ToyModel):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.losses = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.losses.append(loss.detach().float().clone())
        return loss

    def train_dataloader(self):  # equal batches (cuda_graphs)
        return DataLoader(ToyDataset(self.hparams.size, 64, seed=1), batch_size=self.hparams.batch_size,
                          drop_last=True)


def assert_close_losses(a, b):
    torch.testing.assert_close(torch.stack(a.losses), torch.stack(b.losses), rtol=1e-4, atol=1e-5)


@contextlib.contextmanager
def raises(kind, text: str):
    """pytest.raises(kind, match=text) for a runner without pytest (a substring, not a regex)."""
    try:
        yield
    except kind as err:
        assert text in str(err), f"{kind.__name__} raised, but its message lacks {text!r}: {err}"
    else:
        raise AssertionError(f"{kind.__name__} was not raised")


# ---------------------------------------------------------------------------------------------- the checks
def check_precision(precision: str) -> None:
    """The model trains (finite, falling loss) on the GPU in this precision."""
    if precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        raise Skip("this GPU has no bf16")
    model = Recorder()
    make_trainer(max_epochs=3, precision=precision).fit(model)
    assert model.device.type == "cuda"
    losses = torch.stack(model.losses).cpu()
    assert torch.isfinite(losses).all(), losses
    assert losses[-8:].mean() < losses[:8].mean(), losses


def check_16_mixed_skips_an_injected_inf_step() -> None:
    class InfAt2(Recorder):
        def on_after_backward(self):
            if self.trainer.global_step == 2:
                self.layer.weight.grad[0, 0] = float("inf")

    model = InfAt2()
    trainer = make_trainer(max_epochs=1, precision="16-mixed")
    trainer.fit(model)
    assert trainer.strategy.precision.skipped_steps == 1, trainer.strategy.precision.skipped_steps
    assert all(torch.isfinite(p).all() for p in model.parameters())


def check_bf16_on_a_gpu_without_bf16_is_a_construction_error() -> None:
    from surge.utils import MisconfigurationError

    original = torch.cuda.is_bf16_supported
    torch.cuda.is_bf16_supported = lambda *a, **k: False
    try:
        with raises(MisconfigurationError, "has no bf16"):
            make_trainer(precision="bf16-mixed")
    finally:
        torch.cuda.is_bf16_supported = original


def check_adam_becomes_fused_and_matches_the_unfused_one() -> None:
    class AdamModel(Recorder):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    torch.manual_seed(0)
    fused = AdamModel()
    trainer = make_trainer(max_epochs=2)
    trainer.fit(fused)
    assert trainer.optimizers[0].param_groups[0]["fused"] is True
    torch.manual_seed(0)
    plain = AdamModel()
    trainer = make_trainer(max_epochs=2, fuse_optimizers=False)
    trainer.fit(plain)
    assert trainer.optimizers[0].param_groups[0]["fused"] is None
    assert_close_losses(fused, plain)


def check_tf32_default_follows_the_architecture() -> None:
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            make_trainer(max_steps=1).fit(Recorder())
        ampere = torch.cuda.get_device_capability()[0] >= 8
        assert (torch.get_float32_matmul_precision() == "high") == ampere
        assert ("TF32" in out.getvalue()) == ampere, out.getvalue()
        torch.set_float32_matmul_precision("highest")
        make_trainer(max_steps=1, allow_tf32=False).fit(Recorder())
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.set_float32_matmul_precision(previous)


def check_prefetcher_yields_the_loader_batches_on_the_device() -> None:
    from surge.prefetch import CUDAPrefetcher

    loader = DataLoader(ToyDataset(32, 40), batch_size=8)
    got = list(CUDAPrefetcher(loader, torch.device("cuda", 0)))
    assert len(got) == 5 and all(b.is_cuda for b in got)
    for a, b in zip(got, loader):
        torch.testing.assert_close(a.cpu(), b)


def check_num_workers_0_warns_once_naming_the_fix() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_epochs=2).fit(ToyModel())
    hits = [w for w in caught if issubclass(w.category, UserWarning) and "num_workers=4" in str(w.message)]
    assert hits, [str(w.message) for w in caught]


def assert_trains_like_eager(**trainer_args) -> None:
    """The same seeded Recorder trained for 2 epochs with ``trainer_args`` and without: close losses."""
    torch.manual_seed(0)
    eager = Recorder()
    make_trainer(max_epochs=2).fit(eager)
    torch.manual_seed(0)
    other = Recorder()
    make_trainer(max_epochs=2, **trainer_args).fit(other)
    assert_close_losses(other, eager)


def check_compile_on_cuda_trains_like_eager() -> None:
    assert_trains_like_eager(compile=True)


def check_cuda_graphs_train_like_eager_and_refuse_a_new_shape() -> None:
    from surge.utils import SurgeError

    assert_trains_like_eager(cuda_graphs=True)

    class Ragged(Recorder):
        def train_dataloader(self):
            return DataLoader(ToyDataset(32, 60), batch_size=8)  # last batch has 4 rows

    with raises(SurgeError, "drop_last=True"):
        make_trainer(max_epochs=1, cuda_graphs=True).fit(Ragged())


def check_device_stats_read_memory_and_nvml() -> None:
    """DeviceStatsMonitor logs the allocator's counters, and NVML's utilisation/temperature/power when
    nvidia-ml-py is installed (the GPU machine has it)."""
    import importlib.util

    from surge.callbacks import DeviceStatsMonitor

    monitor = DeviceStatsMonitor(every_n_steps=2, cpu_stats=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(max_epochs=1, callbacks=[monitor]).fit(Recorder())
    stats = monitor.last_stats
    assert stats.get("device/gpu_mem_allocated_gb", 0) > 0, stats
    assert stats["device/gpu_mem_peak_gb"] >= stats["device/gpu_mem_allocated_gb"] > 0, stats
    if importlib.util.find_spec("pynvml") is None:
        raise Skip("memory counters pass; nvidia-ml-py (pynvml) is not installed, NVML not checked")
    nvml_warnings = [str(w.message) for w in caught if "NVML" in str(w.message)]
    assert not nvml_warnings, nvml_warnings
    assert 0 <= stats["device/gpu_util_percent"] <= 100, stats
    assert 0 < stats["device/gpu_temp_c"] < 120, stats
    assert 0 < stats["device/gpu_power_w"] < 2000, stats


def check_throughput_monitor_reports_mfu() -> None:
    """ThroughputMonitor counts the FLOPs of a batch and turns them into an MFU against the device's peak."""
    from surge.callbacks import ThroughputMonitor
    from surge.callbacks.throughput import device_peak_flops

    if device_peak_flops(torch.cuda.get_device_name(), "bf16") is None:
        raise Skip(f"{torch.cuda.get_device_name()} is not in DEVICE_PEAK_TFLOPS")
    monitor = ThroughputMonitor(window=2)
    make_trainer(max_epochs=1, precision="bf16-mixed", callbacks=[monitor]).fit(Recorder())
    m = monitor.last_metrics
    assert m.get("throughput/flops_per_sec", 0) > 0, m
    assert 0 < m["throughput/mfu"] < 1, m


CHECKS = {f"precision_{p}": (lambda p=p: check_precision(p)) for p in PRECISIONS}
CHECKS.update({name[len("check_"):]: fn for name, fn in list(globals().items())
               if name.startswith("check_") and name != "check_precision" and callable(fn)})


# ---------------------------------------------------------------------------------------------- the runner
def _alarm(signum, frame):
    raise TimeoutError("the check ran past --check-timeout")


def main() -> int:
    a = parse_args()
    names = [n for n in CHECKS if a.k in n]
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "no CUDA device"
    print(f"gpu_checks: {len(names)} checks, torch {torch.__version__}, {device}", flush=True)
    report = {"part": "tests", "started": True, "pid": os.getpid(), "torch": torch.__version__, "device": device,
              "status": "ok" if cuda else "needs CUDA", "checks": []}

    def save():
        if a.json:
            with open(a.json, "w") as f:
                json.dump(report, f, indent=1)

    if not cuda:
        report.update(needs_cuda_report(names), torch=torch.__version__)
        save()
        print(f"needs CUDA: no CUDA GPU here; the {len(names)} GPU checks were not run", flush=True)
        return 0
    report["planned"] = names  # what a report names as not reached if this process is killed
    save()
    signal.signal(signal.SIGALRM, _alarm)
    for name in names:
        t0 = time.perf_counter()
        signal.alarm(a.check_timeout)
        try:
            CHECKS[name]()
            status, detail = "pass", ""
        except Skip as err:
            status, detail = "skip", str(err)
        except TimeoutError as err:
            status, detail = "timeout", str(err)
        except BaseException as err:  # noqa: B036 - a check's failure of any kind is reported, the rest still run
            if isinstance(err, KeyboardInterrupt):
                raise
            status, detail = "fail", f"{type(err).__name__}: {err}"
            traceback.print_exc()
        finally:
            signal.alarm(0)
        seconds = time.perf_counter() - t0
        report["checks"].append({"name": name, "status": status, "detail": detail[:300], "seconds": round(seconds, 1)})
        save()
        print(f"{status.upper():<7} {name} ({seconds:.1f} s){' - ' + detail if detail else ''}", flush=True)
        torch.cuda.empty_cache()
    failed = sum(c["status"] in ("fail", "timeout") for c in report["checks"])
    print(f"gpu_checks: {len(names) - failed} of {len(names)} passed or skipped, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
