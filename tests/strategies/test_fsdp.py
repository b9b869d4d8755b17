"""FSDP (fully_shard) tested for real: 1, 2 and 4 processes with gloo on CPU.

Each test runs a small training script with ``sys.executable`` (surge's launcher starts the other
rank). Checked against math: N processes on 1/N of each batch end with the weights of one process on
the whole batches; a run resumed from a sharded checkpoint, on any world size, continues with the
losses of the run that was never interrupted.
"""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import surge
import surge.cli
from surge.strategies.fsdp import FSDP, consolidate
from surge.utils import MisconfigurationError

SCRIPT = r'''
import json, os, sys
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import surge
from surge.strategies.fsdp import FSDP

cfg = json.loads(sys.argv[1])
out, devices = cfg["out"], cfg["devices"]


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


class Net(surge.Module):
    def __init__(self):
        super().__init__()
        self.losses = []

    def configure_model(self):
        if hasattr(self, "inp"):
            return
        torch.manual_seed(0)
        # Built on the meta device, the model takes no memory until FSDP allocates each rank's shards.
        with torch.device("meta") if cfg.get("meta") else torch.device("cpu"):
            # 9 rows in the input layer: shards of unequal size on 2 ranks
            self.inp = nn.Linear(8, 9)
            self.blocks = nn.Sequential(Block(9), Block(9))
            self.head = nn.Linear(9, 1)

    def forward(self, x):
        return self.head(self.blocks(self.inp(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.losses.append(float(self.trainer.strategy.reduce(loss.detach(), "mean")))
        self.log("train_loss", loss, sync_dist=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.01, weight_decay=0.01)


def data(n):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x[:, :1] * 2 - x[:, 1:2] + 0.1 * torch.randn(n, 1, generator=g))


if cfg["fsdp"]:
    strategy = FSDP(auto_wrap={Block}, state_dict_type=cfg.get("state_dict_type", "sharded"),
                    activation_checkpointing={Block} if cfg.get("ac") else None)
else:
    strategy = "auto"
model = Net()
trainer = surge.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=cfg["steps"],
                        precision=cfg.get("precision", "32-true"),
                        accumulate_grad_batches=cfg.get("accumulate", 1), gradient_clip_val=cfg.get("clip"),
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing="ckpt_dir" in cfg, callbacks=[surge.callbacks.ModelCheckpoint(
                            cfg["ckpt_dir"], every_n_train_steps=5, save_top_k=2, save_last=True)] if "ckpt_dir" in cfg else None)
# The global batch is 8: 8 // devices per rank.
trainer.fit(model, DataLoader(data(640), batch_size=8 // devices, shuffle=False), ckpt_path=cfg.get("resume"))
if cfg.get("save"):
    trainer.save_checkpoint(cfg["save"])
# A plain state dict of the trained weights, gathered (a collective: every rank).
sd = trainer.strategy.module_state_dict() if not cfg["fsdp"] else None
if cfg["fsdp"]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(trainer.strategy.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if trainer.is_global_zero:
    torch.save({"weights": {k: v.detach().clone() for k, v in sd.items()}, "losses": model.losses,
                "step": trainer.global_step, "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
                "logged": float(trainer.callback_metrics["train_loss"])}, os.path.join(out, "result.pt"))
'''


def _run(tmp_path, name, **cfg):
    import json

    out = tmp_path / name
    out.mkdir()
    script = tmp_path / "fsdp_script.py"
    script.write_text(SCRIPT)
    cfg = {"out": str(out), "devices": 1, "fsdp": True, "steps": 20, **cfg}
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT",
                                                            "MASTER_ADDR", "TORCHELASTIC_RUN_ID", "SURGE_LAUNCHER_PID")}
    proc = subprocess.run([sys.executable, str(script), json.dumps(cfg)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out / "result.pt", weights_only=False)


def _assert_close(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= tol, f"weights differ by {worst:.3g}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs shared by several tests, each started once."""
    tmp = tmp_path_factory.mktemp("fsdp")
    cache = {}

    def get(name, **cfg):
        if name not in cache:
            cache[name] = _run(tmp, name, **cfg)
        return cache[name]

    get.tmp = tmp
    return get


def test_two_ranks_match_one_process(runs):
    single = runs("single", fsdp=False)
    sharded = runs("fsdp2", devices=2)
    assert sharded["step"] == 20
    _assert_close(single["weights"], sharded["weights"])
    assert sharded["losses"] == pytest.approx(single["losses"], abs=1e-5)
    # self.log(sync_dist=True) under FSDP: the mean of the ranks' losses, as under DDP
    assert sharded["logged"] == pytest.approx(single["logged"], abs=1e-4)


def test_accumulation_and_clipping_match_one_process(runs):
    single = runs("single_acc", fsdp=False, accumulate=2, clip=0.05, steps=10)
    sharded = runs("fsdp2_acc", devices=2, accumulate=2, clip=0.05, steps=10)
    assert sharded["step"] == 10 and len(sharded["losses"]) == 20
    _assert_close(single["weights"], sharded["weights"])


def test_sharded_checkpoint_resumes_on_other_world_sizes(runs):
    full = runs("fsdp2", devices=2)  # the uninterrupted 20-step run
    ckpt = str(runs.tmp / "half.ckpt")
    first = runs("fsdp4_half", devices=4, steps=10, save=ckpt)  # saved on 4 ranks
    assert os.path.isdir(ckpt) and os.path.isfile(os.path.join(ckpt, "surge_meta.pt"))
    assert first["losses"] == pytest.approx(full["losses"][:10], abs=1e-6)
    for name, cfg in {"resume2": dict(devices=2), "resume1_fsdp": dict(devices=1),
                      "resume1_plain": dict(devices=1, fsdp=False)}.items():
        resumed = runs(name, resume=ckpt, **cfg)
        assert resumed["step"] == 20, name
        assert resumed["losses"] == pytest.approx(full["losses"][10:], abs=1e-5), name
        _assert_close(full["weights"], resumed["weights"])


def test_consolidate_loads_into_plain_module(runs, tmp_path):
    full = runs("fsdp2", devices=2)
    ckpt = str(runs.tmp / "end.ckpt")
    runs("fsdp2_end", devices=2, save=ckpt, ckpt_dir=str(runs.tmp / "mc"))
    # ModelCheckpoint writes folders too, and drops the ones that leave the top k
    assert sorted(os.listdir(runs.tmp / "mc")) == ["epoch=0-step=15.ckpt", "epoch=0-step=20.ckpt", "last.ckpt"]
    assert os.path.isfile(runs.tmp / "mc" / "last.ckpt" / "surge_meta.pt")
    out = consolidate(ckpt, tmp_path / "model.ckpt", weights_only=True)
    state = torch.load(out, weights_only=True)["state_dict"]
    torch.manual_seed(0)
    net = nn.Module()
    net.inp, net.head = nn.Linear(8, 9), nn.Linear(9, 1)
    net.blocks = nn.Sequential(*[nn.Module() for _ in range(2)])
    for b in net.blocks:
        b.fc = nn.Linear(9, 9)
    net.load_state_dict(state)
    _assert_close(full["weights"], dict(net.state_dict()))
    # the same through the command line, with the optimizer and trainer state kept
    assert surge.cli.main(["consolidate", ckpt, str(tmp_path / "all.ckpt")]) == 0
    assert len(torch.load(tmp_path / "all.ckpt", weights_only=True)["optimizer_states"]) == 1


def test_full_state_dict_is_one_file(runs):
    ckpt = str(runs.tmp / "full.ckpt")
    runs("fsdp2_full", devices=2, steps=10, save=ckpt, state_dict_type="full")
    assert os.path.isfile(ckpt)
    loaded = torch.load(ckpt, weights_only=True)
    assert loaded["state_dict"]["inp.weight"].shape == (9, 8)
    assert set(loaded["optimizer_states"][0]["state"]) == set(range(8))
    resumed = runs("resume_full", devices=2, resume=ckpt)
    assert resumed["losses"] == pytest.approx(runs("fsdp2", devices=2)["losses"][10:], abs=1e-5)


def test_meta_init_bf16_and_activation_checkpointing(runs):
    """configure_model on the meta device, precision="bf16-mixed" through FSDP's policy, recomputed blocks."""
    run = runs("fsdp2_meta_bf16", devices=2, meta=True, ac=True, precision="bf16-mixed", steps=8)
    assert run["step"] == 8 and run["dtypes"] == ["torch.float32"]  # sharded master weights stay fp32
    assert all(map(torch.isfinite, torch.tensor(run["losses"])))
    assert run["losses"][-1] < run["losses"][0]
    assert run["weights"]["inp.weight"].shape == (9, 8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(state_dict_type="local"), "state_dict_type='local'"),
    (dict(hsdp=(2,)), "hsdp"),
    (dict(auto_wrap="Linear"), "auto_wrap"),
    (dict(activation_checkpointing=[int]), "activation_checkpointing"),
    (dict(mixed_precision="bf16"), "MixedPrecisionPolicy"),
    (dict(reshard_after_forward=None), "reshard_after_forward"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(MisconfigurationError, match=match):
        FSDP(**kwargs)


def test_hsdp_shape_must_match_world_size(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(MisconfigurationError, match=r"hsdp=\(2, 2\).*4 processes.*has 2"):
        surge.Trainer(strategy=FSDP(hsdp=(2, 2)), accelerator="cpu", devices=2)
    with pytest.raises(MisconfigurationError, match="cpu_offload"):
        surge.Trainer(strategy=FSDP(cpu_offload=True), accelerator="cpu", devices=2)
    with pytest.raises(MisconfigurationError, match="bf16-mixed"):
        surge.Trainer(strategy="fsdp", accelerator="cpu", devices=2, precision="16-mixed")


def test_registered_by_name():
    assert "fsdp" in surge.strategies.strategy_names()
