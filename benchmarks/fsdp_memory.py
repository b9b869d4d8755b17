"""Parameter + optimizer-state bytes per rank under FSDP at 1, 2 and 4 ranks, against the unsharded total.

Counts the local shard of every parameter and every optimizer-state tensor (AdamW: exp_avg,
exp_avg_sq; "step" is a scalar per parameter) after one real training step with gloo on CPU, so
the optimizer states exist. Activations and communication buffers are not counted: this measures
what sharding is for, the persistent state.

    python benchmarks/fsdp_memory.py            # 1, 2, 4 ranks
    python benchmarks/fsdp_memory.py 1 2        # chosen world sizes

Each world size is a separate run started by surge's own launcher (this script calls itself).
"""
import json
import os
import subprocess
import sys
import tempfile

WORKER = r'''
import json, sys
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import surge
from surge.strategies.fsdp import FSDP

out, devices = sys.argv[1], int(sys.argv[2])


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class Net(surge.Module):
    def configure_model(self):
        if not hasattr(self, "blocks"):
            torch.manual_seed(0)
            self.blocks = nn.Sequential(*[Block(256) for _ in range(4)])  # about 2.1 M parameters

    def training_step(self, batch, batch_idx):
        return F.mse_loss(self.blocks(batch[0]), batch[0])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def local_bytes(t):
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def full_bytes(t):
    return t.numel() * t.element_size()  # a DTensor's numel is the global one


model = Net()
trainer = surge.Trainer(accelerator="cpu", devices=devices, strategy=FSDP(auto_wrap={Block}), max_steps=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(model, DataLoader(TensorDataset(torch.randn(64, 256)), batch_size=8))
params = list(model.parameters())
states = [v for s in trainer.optimizers[0].state.values() for v in s.values() if torch.is_tensor(v)]
mine = {"params": sum(map(local_bytes, params)), "optimizer": sum(map(local_bytes, states)),
        "params_full": sum(map(full_bytes, params)), "optimizer_full": sum(map(full_bytes, states))}
everyone = [None] * trainer.world_size
torch.distributed.all_gather_object(everyone, mine)
if trainer.is_global_zero:
    json.dump(everyone, open(out, "w"))
'''


def main(sizes):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        worker = os.path.join(tmp, "fsdp_memory_worker.py")
        with open(worker, "w") as f:
            f.write(WORKER)
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
        for n in sizes:
            out = os.path.join(tmp, f"{n}.json")
            subprocess.run([sys.executable, worker, out, str(n)], check=True, env=env, cwd=tmp)
            ranks = json.load(open(out))
            total = ranks[0]["params_full"] + ranks[0]["optimizer_full"]
            peak = max(r["params"] + r["optimizer"] for r in ranks)
            rows.append((n, total, peak))
    print(f"{'ranks':>5} {'unsharded MiB':>14} {'peak per rank MiB':>18} {'ratio':>7} {'ideal':>7}")
    for n, total, peak in rows:
        print(f"{n:>5} {total / 2**20:>14.2f} {peak / 2**20:>18.2f} {peak / total:>7.3f} {1 / n:>7.3f}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1, 2, 4])
