"""Tokens/s and MFU of a GPT-2-small-sized model in bf16: a plain PyTorch loop against surge and Lightning.

The model is surge.demos.gpt.GPT at d=768, 12 layers, 12 heads, T=1024, vocab 50304 (untied head,
about 163M parameters). Up to six runs in one invocation: plain, surge and Lightning (``--runs``), each
eager and/or compiled (``--compile off|on|both``). The plain loop is the best one a careful user writes:
bf16 autocast, fused AdamW, TF32, pinned memory and non-blocking copies. surge runs
``Trainer(precision="bf16-mixed")`` with its defaults (which fuse AdamW and turn TF32 on by themselves)
and ``compile=True`` for the compiled run. Lightning (``lightning.pytorch`` or ``pytorch_lightning``, when
installed) runs the same training_step as surge under ``Trainer(precision="bf16-mixed")``, with what a
careful Lightning user adds by hand: fused AdamW, TF32, and ``torch.compile(module)`` for the compiled run.

Each run is bounded by ``--run-timeout`` seconds (an alarm: it ends a run stuck in Python, such as a
compile, and the next run goes on) and reports its peak GPU memory; a run that runs out of memory is
reported as OOM. ``--json PATH`` writes the results for benchmarks/gpu_check.sh after every run. The exit
status is 1 when a run ended in a timeout, OOM or error (Lightning not installed is not a failure), and 0
without CUDA (the script says "needs CUDA").

FLOPs per token: 6 N + 12 L d T (N: parameters outside the embeddings; PaLM's MFU convention, as
nanoGPT); the peak is the device's dense bf16 peak (surge.callbacks.throughput.DEVICE_PEAK_TFLOPS).

Usage (CUDA):  python benchmarks/gpt_mfu.py [--batch 32] [--steps 30] [--warmup 10] [--compile both]
                   [--runs plain,surge,lightning] [--run-timeout 300] [--json PATH]
On a CPU:      python benchmarks/gpt_mfu.py --tiny      (a small config, float32, no MFU: checks the script)
"""
import argparse
import gc
import json
import os
import signal
import sys
import time

from cuda_probe import exit_if_no_cuda

RUN_NAMES = ("plain", "surge", "lightning")
NO_CUDA = ("measures a GPT-2-small in bf16 on a CUDA GPU and none is available here; "
           "run it on a GPU machine, or pass --tiny to check the script on this CPU")


def parse_args():
    """The arguments, the runs (checked against RUN_NAMES) and the compile modes."""
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--compile", choices=("off", "on", "both"), default="both")
    p.add_argument("--runs", default="plain,surge,lightning", help="comma-separated: plain, surge, lightning")
    p.add_argument("--run-timeout", type=int, default=300, help="seconds one run may take (compile included)")
    p.add_argument("--json", help="write the results to this file after every run (for benchmarks/gpu_check.sh)")
    p.add_argument("--tiny", action="store_true", help="a small config (runs on a CPU; checks the script)")
    a = p.parse_args()
    runs = [r.strip() for r in a.runs.split(",") if r.strip()]
    unknown = sorted(set(runs) - set(RUN_NAMES))
    if unknown:
        p.error(f"--runs: unknown {', '.join(unknown)}; accepted: {', '.join(RUN_NAMES)}")
    modes = {"off": [False], "on": [True], "both": [False, True]}[a.compile]
    return a, runs, modes


def needs_cuda_rows(runs, modes) -> list:
    return [{"run": r, "compiled": m, "status": "needs CUDA"} for m in modes for r in runs]


if __name__ == "__main__":  # before torch's import (seconds): without CUDA the script is done in milliseconds
    _args, _runs, _modes = parse_args()
    if not _args.tiny:
        exit_if_no_cuda("gpt_mfu.py", _args.json, {"part": "gpt", "started": True, "pid": os.getpid(),
                                                   "rows": needs_cuda_rows(_runs, _modes)}, NO_CUDA)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import surge  # noqa: E402
from lightning_import import NOT_INSTALLED, import_lightning, lightning_label  # noqa: E402
from surge.demos.gpt import GPT, GPTConfig, GPTModule  # noqa: E402


def config(tiny: bool) -> GPTConfig:
    if tiny:
        return GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=64, vocab_size=512, lr=6e-4)
    return GPTConfig(block_size=1024, n_layer=12, n_head=12, n_embd=768, vocab_size=50304, lr=6e-4)


def loader(c: GPTConfig, batch: int, steps: int, cuda: bool) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, c.vocab_size, (batch * steps, c.block_size + 1), generator=g)
    return DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=batch, pin_memory=cuda,
                      num_workers=2 if cuda else 0, persistent_workers=cuda, drop_last=True)


def flops_per_token(model: torch.nn.Module, c: GPTConfig) -> float:
    n = sum(p.numel() for p in model.parameters()) - model.tok_emb.weight.numel() - model.pos_emb.weight.numel()
    return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain(c, a, device, compiled: bool) -> float:
    """Seconds per step after warm-up."""
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32
    model = GPT(c).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, fused=device.type == "cuda")
    fwd = torch.compile(model) if compiled else model
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t0 = None
    for i, (x, y) in enumerate(loader(c, a.batch, a.warmup + a.steps, device.type == "cuda")):
        if i == a.warmup:
            sync(device)
            t0 = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            logits = fwd(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return (time.perf_counter() - t0) / a.steps


def timer_class(callback_base):
    """A callback that times the steps after the warm-up, for surge's or Lightning's Trainer."""

    class Timer(callback_base):
        def __init__(self, warmup: int, device):
            self.warmup, self.device, self.t0 = warmup, device, None

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx + 1 == self.warmup:
                sync(self.device)
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, module):
            sync(self.device)
            self.elapsed = time.perf_counter() - self.t0

    return Timer


def with_surge(c, a, device, compiled: bool) -> float:
    torch.manual_seed(0)
    timer = timer_class(surge.Callback)(a.warmup, device)
    trainer = surge.Trainer(accelerator=device.type, devices=1, max_steps=a.warmup + a.steps,
                            precision="bf16-mixed" if device.type == "cuda" else "32-true", compile=compiled,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(GPTModule(c), loader(c, a.batch, a.warmup + a.steps, device.type == "cuda"))
    return timer.elapsed / a.steps


def with_lightning(c, a, device, compiled: bool) -> float:
    L = import_lightning()

    class LitGPT(L.LightningModule):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.model = GPT(config)

        def forward(self, idx):
            return self.model(idx)

        training_step = GPTModule.training_step  # the very step surge runs

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=self.config.lr, fused=self.device.type == "cuda")

    torch.manual_seed(0)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, which Lightning leaves to the user
    timer = timer_class(L.Callback)(a.warmup, device)
    module = LitGPT(c)
    if compiled:
        module = torch.compile(module)  # Lightning's documented way: fit() unwraps it and compiles forward
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        max_steps=a.warmup + a.steps, precision="bf16-mixed" if device.type == "cuda" else "32-true",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(module, loader(c, a.batch, a.warmup + a.steps, device.type == "cuda"))
    return timer.elapsed / a.steps


RUNS = {"plain": plain, "surge": with_surge, "lightning": with_lightning}
assert tuple(RUNS) == RUN_NAMES


class RunTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise RunTimeout()


def measure(fn, c, a, device, compiled, fpt, peak) -> dict:
    """One run as a result row: its speed, or why there is none (timeout, OOM, error)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    signal.alarm(a.run_timeout)
    try:
        step = fn(c, a, device, compiled)
    except RunTimeout:
        return {"status": "timeout", "detail": f"past --run-timeout {a.run_timeout} s"}
    except torch.cuda.OutOfMemoryError as err:
        return {"status": "OOM", "detail": str(err).split("\n")[0][:200]}
    except Exception as err:  # one failing run is reported; the others still run
        import traceback

        traceback.print_exc()
        return {"status": "error", "detail": f"{type(err).__name__}: {err}"[:300]}
    finally:
        signal.alarm(0)
    tps = a.batch * c.block_size / step
    row = {"status": "ok", "ms_per_step": step * 1e3, "tokens_per_s": tps, "mfu": tps * fpt / peak if peak else None}
    if cuda:
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def main() -> int:
    a, runs, modes = parse_args()
    result = {"part": "gpt", "started": True, "pid": os.getpid(), "torch": torch.__version__, "rows": []}

    def save(**extra):
        result.update(extra)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=1)

    print(f"gpt_mfu.py: runs {','.join(runs)}, compile {a.compile}, torch {torch.__version__}", flush=True)
    cuda = torch.cuda.is_available()
    if not cuda and not a.tiny:
        save(status="needs CUDA", device="no CUDA device", rows=needs_cuda_rows(runs, modes))
        print(f"needs CUDA: gpt_mfu.py {NO_CUDA} (torch sees no CUDA device)")
        return 0
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    c = config(a.tiny)
    if a.tiny:
        a.batch, a.steps, a.warmup = min(a.batch, 4), min(a.steps, 5), min(a.warmup, 2)
    fpt = flops_per_token(GPT(c), c)
    peak = None
    if cuda:
        from surge.callbacks.throughput import device_peak_flops

        peak = device_peak_flops(torch.cuda.get_device_name(device), "bf16")
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    L = import_lightning() if "lightning" in runs else None
    save(status="ok", device=name, peak_flops=peak, flops_per_token=fpt, lightning=lightning_label(L) if L else None,
         config={"batch": a.batch, "steps": a.steps, "warmup": a.warmup, "block_size": c.block_size,
                 "n_layer": c.n_layer, "n_embd": c.n_embd, "vocab_size": c.vocab_size})
    print(f"{name}, torch {torch.__version__}, d={c.n_embd} L={c.n_layer} H={c.n_head} T={c.block_size} "
          f"vocab={c.vocab_size}, batch {a.batch}, {a.steps} timed steps after {a.warmup}")
    print(f"{'run':<20} {'ms/step':>9} {'tokens/s':>11} {'MFU':>7} {'peak GiB':>9}")
    signal.signal(signal.SIGALRM, _alarm)
    for compiled in modes:
        for label in runs:
            title = label + (" compiled" if compiled else "")
            if label == "lightning" and L is None:
                row = {"status": NOT_INSTALLED}
            else:
                row = measure(RUNS[label], c, a, device, compiled, fpt, peak)
            result["rows"].append(dict(row, run=label, compiled=compiled))
            save()
            if row["status"] != "ok":
                print(f"{title:<20} {row['status']}{': ' + row['detail'] if row.get('detail') else ''}", flush=True)
            else:
                mfu = f"{row['mfu']:7.1%}" if row["mfu"] else "    n/a"
                mem = f"{row['peak_mem_gib']:9.1f}" if "peak_mem_gib" in row else "      n/a"
                print(f"{title:<20} {row['ms_per_step']:9.1f} {row['tokens_per_s']:11.0f} {mfu} {mem}", flush=True)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    failed = [r for r in result["rows"] if r["status"] not in ("ok", NOT_INSTALLED)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
