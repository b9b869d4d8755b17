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
                    activation_checkpointing={Block} if cfg.get("ac") else None,
                    async_save=cfg.get("async_save", False), hsdp=cfg.get("hsdp"))
else:
    strategy = "auto"
model = Net()
trainer = surge.Trainer(accelerator=cfg.get("accelerator", "cpu"), devices=devices, strategy=strategy, max_steps=cfg["steps"],
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
# the optimizer steps the grad scaler skipped ("16-mixed"), on every rank
skipped = trainer.strategy.all_gather_object(getattr(trainer.strategy.precision, "skipped_steps", 0)) \
    if cfg["fsdp"] else [getattr(trainer.strategy.precision, "skipped_steps", 0)]
if trainer.is_global_zero:
    torch.save({"weights": {k: v.detach().clone() for k, v in sd.items()}, "losses": model.losses,
                "step": trainer.global_step, "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
                "logged": float(trainer.callback_metrics["train_loss"]),
                "skipped": skipped}, os.path.join(out, "result.pt"))
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


def _end_run(runs):
    """2 ranks, 20 steps, ModelCheckpoint every 5 steps (top 2 and last) written with async_save, then
    trainer.save_checkpoint("end.ckpt") after fit (synchronous: outside a stage nothing would wait)."""
    return runs("fsdp2_end", devices=2, async_save=True, save=str(runs.tmp / "end.ckpt"), ckpt_dir=str(runs.tmp / "mc"))


def test_consolidate_loads_into_plain_module(runs, tmp_path):
    full = runs("fsdp2", devices=2)
    ckpt = str(runs.tmp / "end.ckpt")
    _end_run(runs)
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


def test_hsdp_four_ranks_match_one_process(runs):
    """A 2-D mesh: 2 replicas x 2 shards. Gradients are reduce-scattered within each shard group and
    all-reduced across the replicas: the same math as one process on the whole batches."""
    single = runs("single", fsdp=False)
    hsdp = runs("hsdp_2x2", devices=4, hsdp=[2, 2])
    assert hsdp["step"] == 20
    _assert_close(single["weights"], hsdp["weights"])
    assert hsdp["losses"] == pytest.approx(single["losses"], abs=1e-5)


def test_async_save_resumes_like_sync(runs):
    """async_save=True: the same training, the checkpoints complete when fit returns (the stale top-k
    ones removed only after the newer one was committed), and they resume with the uninterrupted losses."""
    full = runs("fsdp2", devices=2)
    mc = runs.tmp / "mc"
    run = _end_run(runs)
    assert run["losses"] == full["losses"]
    _assert_close(full["weights"], run["weights"], tol=0)
    # no temporary folders left: every checkpoint is committed under its name, with all its parts
    assert sorted(os.listdir(mc)) == ["epoch=0-step=15.ckpt", "epoch=0-step=20.ckpt", "last.ckpt"]
    for name in os.listdir(mc):
        assert {".metadata", "surge_meta.pt", "__0_0.distcp", "__1_0.distcp"} <= set(os.listdir(mc / name)), name
    resumed = runs("resume_async", devices=2, resume=str(mc / "epoch=0-step=15.ckpt"))
    assert resumed["step"] == 20
    assert resumed["losses"] == pytest.approx(full["losses"][15:], abs=1e-5)
    _assert_close(full["weights"], resumed["weights"])


def test_pending_save_commits_then_prunes(tmp_path):
    """The bookkeeping of one asynchronous save, without processes: nothing is visible or deleted before
    the write completes; a failed write commits nothing, deletes nothing, and wait() names the checkpoint."""
    from concurrent.futures import Future

    from surge.checkpoint import CheckpointWriteError
    from surge.strategies.fsdp_checkpoint import PendingSave, commit_folder

    old, tmp, new = tmp_path / "step=5.ckpt", tmp_path / ".step=15.ckpt.tmp", tmp_path / "step=15.ckpt"
    old.mkdir(), tmp.mkdir()
    future = Future()
    pending = PendingSave(future, str(new), lambda: commit_folder(str(tmp), str(new)))
    assert pending.remove_after(str(old))
    assert old.exists() and not new.exists()
    future.set_result(None)
    pending.wait()
    assert new.is_dir() and not tmp.exists() and not old.exists()
    assert not pending.remove_after(str(new))  # done: the caller deletes at once

    old.mkdir(), tmp.mkdir()
    future, failed = Future(), tmp_path / "step=20.ckpt"
    pending = PendingSave(future, str(failed), lambda: commit_folder(str(tmp), str(failed)))
    pending.remove_after(str(old))
    future.set_exception(OSError(28, "No space left on device"))
    with pytest.raises(CheckpointWriteError, match=r"step=20.ckpt.*No space left.*previous checkpoints are intact"):
        pending.wait()
    assert old.exists() and not failed.exists()


def test_fp16_mixed_with_sharded_grad_scaler(runs):
    """precision="16-mixed": float16 compute through FSDP's policy, float32 master weights, and a scaler
    that sees inf in any rank's gradient shard, so that every rank skips the same steps (the initial
    scale 2**16 overflows float16 gradients at first: some steps are skipped)."""
    run = runs("fsdp2_fp16", devices=2, precision="16-mixed", steps=12)
    assert run["step"] == 12 and run["dtypes"] == ["torch.float32"]
    assert run["skipped"][0] == run["skipped"][1] and 1 <= run["skipped"][0] < 12, run["skipped"]
    assert all(map(torch.isfinite, torch.tensor(run["losses"])))
    assert sum(run["losses"][-4:]) < sum(run["losses"][:4])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_cuda_mixed_precision_and_async_save(runs, precision):
    """Written without a GPU and not run yet: one CUDA process (NCCL for training, the gloo group for the
    background writes), FSDP's float16 / bf16 policy, async checkpoints that resume."""
    mc = runs.tmp / f"mc_cuda_{precision}"
    run = runs(f"cuda_{precision}", accelerator="cuda", precision=precision, async_save=True, ckpt_dir=str(mc),
               steps=12)
    assert run["step"] == 12 and run["dtypes"] == ["torch.float32"]
    assert all(map(torch.isfinite, torch.tensor(run["losses"])))
    assert {"epoch=0-step=10.ckpt", "last.ckpt"} <= set(os.listdir(mc))
    resumed = runs(f"cuda_{precision}_resume", accelerator="cuda", precision=precision, steps=12,
                   resume=str(mc / "epoch=0-step=10.ckpt"))
    assert resumed["step"] == 12
    assert resumed["losses"] == pytest.approx(run["losses"][10:], abs=1e-3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(state_dict_type="local"), "state_dict_type='local'"),
    (dict(hsdp=(2,)), "hsdp"),
    (dict(auto_wrap="Linear"), "auto_wrap"),
    (dict(activation_checkpointing=[int]), "activation_checkpointing"),
    (dict(mixed_precision="bf16"), "MixedPrecisionPolicy"),
    (dict(reshard_after_forward=None), "reshard_after_forward"),
    (dict(async_save="yes"), r"async_save='yes'.*True or False"),
    (dict(async_save=True, state_dict_type="full"), r"async_save=True.*state_dict_type='sharded', got .*'full'"),
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


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)])
def test_mixed_precision_maps_to_fsdp_policy(monkeypatch, precision, dtype):
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    strategy = surge.Trainer(strategy="fsdp", accelerator="cpu", devices=2, precision=precision).strategy
    policy = strategy._fsdp_kwargs()["mp_policy"]
    assert (policy.param_dtype, policy.reduce_dtype, policy.output_dtype) == (dtype, torch.float32, None)
    assert strategy._fsdp_kwargs(root=True)["mp_policy"].output_dtype == torch.float32  # the loss, in float32
    assert isinstance(strategy.precision.scaler, ShardedGradScaler) == (dtype == torch.float16)


def test_registered_by_name():
    assert "fsdp" in surge.strategies.strategy_names()
