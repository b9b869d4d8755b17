"""Tokens/s and MFU of a GPT-2-small-sized model in bf16: a plain PyTorch loop against surge, same process.

The model is surge.demos.gpt.GPT at d=768, 12 layers, 12 heads, T=1024, vocab 50304 (untied head,
about 163M parameters). Four runs in one invocation: plain eager, surge eager, plain compiled, surge
compiled (``--compile off|on|both``). The plain loop is the best one a careful user writes: bf16 autocast,
fused AdamW, TF32, pinned memory and non-blocking copies. surge runs ``Trainer(precision="bf16-mixed")``
with its defaults (which fuse AdamW and turn TF32 on by themselves) and ``compile=True`` for the compiled run.

FLOPs per token: 6 N + 12 L d T (N: parameters outside the embeddings; PaLM's MFU convention, as
nanoGPT); the peak is the device's dense bf16 peak (surge.callbacks.throughput.DEVICE_PEAK_TFLOPS).

Usage (CUDA):  python benchmarks/gpt_mfu.py [--batch 32] [--steps 30] [--warmup 10] [--compile both]
On a CPU:      python benchmarks/gpt_mfu.py --tiny      (a small config, float32, no MFU: checks the script)
"""
import argparse
import gc
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import surge
from surge.demos.gpt import GPT, GPTConfig, GPTModule


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


class Timer(surge.Callback):
    def __init__(self, warmup: int, device):
        self.warmup, self.device, self.t0 = warmup, device, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx + 1 == self.warmup:
            sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, module):
        sync(self.device)
        self.elapsed = time.perf_counter() - self.t0


def with_surge(c, a, device, compiled: bool) -> float:
    torch.manual_seed(0)
    timer = Timer(a.warmup, device)
    trainer = surge.Trainer(accelerator=device.type, devices=1, max_steps=a.warmup + a.steps,
                            precision="bf16-mixed" if device.type == "cuda" else "32-true", compile=compiled,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, callbacks=[timer])
    trainer.fit(GPTModule(c), loader(c, a.batch, a.warmup + a.steps, device.type == "cuda"))
    return timer.elapsed / a.steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--compile", choices=("off", "on", "both"), default="both")
    p.add_argument("--tiny", action="store_true", help="a small config (runs on a CPU; checks the script)")
    a = p.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not a.tiny:
        sys.exit("gpt_mfu.py measures a GPT-2-small in bf16 on a CUDA GPU and none is available here; "
                 "run it on a GPU machine, or pass --tiny to check the script on this CPU")
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
    print(f"{name}, torch {torch.__version__}, d={c.n_embd} L={c.n_layer} H={c.n_head} T={c.block_size} "
          f"vocab={c.vocab_size}, batch {a.batch}, {a.steps} timed steps after {a.warmup}")
    print(f"{'run':<16} {'ms/step':>9} {'tokens/s':>11} {'MFU':>7}")
    modes = {"off": [False], "on": [True], "both": [False, True]}[a.compile]
    for compiled in modes:
        for label, fn in (("plain", plain), ("surge", with_surge)):
            step = fn(c, a, device, compiled)
            tps = a.batch * c.block_size / step
            mfu = f"{tps * fpt / peak:7.1%}" if peak else "    n/a"
            print(f"{label + (' compiled' if compiled else ''):<16} {step * 1e3:9.1f} {tps:11.0f} {mfu}", flush=True)
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
