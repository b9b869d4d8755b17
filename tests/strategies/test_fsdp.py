"""FSDP (fully_shard) tested for real: 1, 2 and 4 processes with gloo on CPU.

Starting processes costs far more than the tiny trainings, so the runs are grouped by world size:
one launch (``python train.py`` with ``sys.executable``; surge's launcher starts the other ranks) runs
every configuration of its world size back to back, each in a folder of its own, and the tests check
what those folders hold. The process group lives until the processes exit, so only the first Trainer
of a launch pays for starting ranks and the rendezvous. Checked against math: N processes on 1/N of
each batch end with the weights of one process on the whole batches; a run resumed from a sharded
checkpoint, on any world size, continues with the losses of the run that was never interrupted.
"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import surge
import surge.cli
from surge.strategies.fsdp import FSDP, consolidate
from surge.utils import MisconfigurationError

from launch_env import child_env, clear_launch_vars

SCRIPT = r'''
import json, os, sys, traceback
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import surge
from surge.strategies.fsdp import FSDP

root = sys.argv[1]
with open(os.path.join(root, "configs.json")) as f:
    configs = json.load(f)


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


class Net(surge.Module):
    def __init__(self, meta):
        super().__init__()
        self.meta = meta
        self.losses = []

    def configure_model(self):
        if hasattr(self, "inp"):
            return
        torch.manual_seed(0)
        # Built on the meta device, the model takes no memory until FSDP allocates each rank's shards.
        with torch.device("meta") if self.meta else torch.device("cpu"):
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

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y), sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.mse_loss(self(x), y), sync_dist=True)

    def predict_step(self, batch, batch_idx):
        return self(batch[0])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.01, weight_decay=0.01)


def data(n):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x[:, :1] * 2 - x[:, 1:2] + 0.1 * torch.randn(n, 1, generator=g))


def run(cfg, out):
    # Each configuration starts from the same random state, whatever ran before it in this process.
    torch.manual_seed(0)
    devices = cfg["devices"]
    if cfg["fsdp"]:
        strategy = FSDP(auto_wrap={Block}, state_dict_type=cfg.get("state_dict_type", "sharded"),
                        activation_checkpointing={Block} if cfg.get("ac") else None,
                        async_save=cfg.get("async_save", False), hsdp=cfg.get("hsdp"))
    else:
        strategy = "auto"
    model = Net(meta=cfg.get("meta", False))
    trainer = surge.Trainer(accelerator=cfg.get("accelerator", "cpu"), devices=devices, strategy=strategy,
                            max_steps=cfg["steps"], precision=cfg.get("precision", "32-true"),
                            accumulate_grad_batches=cfg.get("accumulate", 1), gradient_clip_val=cfg.get("clip"),
                            logger=False, enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing="ckpt_dir" in cfg, callbacks=[surge.callbacks.ModelCheckpoint(
                                cfg["ckpt_dir"], every_n_train_steps=5, save_top_k=2, save_last=True, monitor="step", mode="max")]
                            if "ckpt_dir" in cfg else None)
    # The global batch is 8: 8 // devices per rank.
    val = DataLoader(data(64), batch_size=8 // devices) if cfg.get("val") else None
    trainer.fit(model, DataLoader(data(640), batch_size=8 // devices, shuffle=False), val,
                ckpt_path=cfg.get("resume"))
    evaluated = {}
    if val is not None:  # the sanity check and a validation every epoch ran inside fit; then the other stages
        evaluated["fit_val_loss"] = float(trainer.callback_metrics["val_loss"])
        evaluated.update(trainer.validate(model, val, verbose=False)[0])
        evaluated.update(trainer.test(model, val, verbose=False)[0])
        evaluated["predictions"] = torch.cat(trainer.predict(model, val))
    if cfg.get("save"):
        trainer.save_checkpoint(cfg["save"])
    # A plain state dict of the trained weights, gathered (a collective: every rank).
    if cfg["fsdp"]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        sd = get_model_state_dict(trainer.strategy.module,
                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = trainer.strategy.module_state_dict()
    # the optimizer steps the grad scaler skipped ("16-mixed"), on every rank
    skipped = getattr(trainer.strategy.precision, "skipped_steps", 0)
    skipped = trainer.strategy.all_gather_object(skipped) if cfg["fsdp"] else [skipped]
    if trainer.is_global_zero:
        torch.save({"weights": {k: v.detach().clone() for k, v in sd.items()}, "losses": model.losses,
                    "step": trainer.global_step, "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
                    "logged": float(trainer.callback_metrics["train_loss"]),
                    "skipped": skipped, "evaluated": evaluated}, os.path.join(out, "result.pt"))


for cfg in configs:
    out = os.path.join(root, cfg["name"])
    try:
        run(cfg, out)
    except BaseException:
        # The ranks of one launch share a process group: the configurations after this one cannot run.
        with open(os.path.join(out, f"error{os.environ.get('RANK', '0')}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise
'''


def config(name, devices, fsdp=True, steps=20, **extra):
    return {"name": name, "devices": devices, "fsdp": fsdp, "steps": steps, **extra}


@dataclasses.dataclass
class Launch:
    """What one launch left: a folder per configuration, its exit code and its stderr."""

    root: Path
    returncode: int
    stderr: str

    def result(self, name: str) -> dict:
        """What configuration ``name`` saved on rank 0, or a failure with the traceback that stopped it."""
        path = self.root / name / "result.pt"
        if not path.exists():
            errors = "".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                             for p in sorted((self.root / name).glob("error*.txt")))
            failed = sorted({p.parent.name for p in self.root.glob("*/error*.txt")})
            if not errors and failed:  # one process group for all: a failure ends the launch
                errors = f"it did not run: the launch stopped at the failure of {', '.join(failed)}"
            pytest.fail(f"{name!r} left no result (the launch exited with {self.returncode}):\n"
                        f"{errors or self.stderr[-4000:]}")
        return torch.load(path, weights_only=False)


def launch(root: Path, configs: list, timeout: float) -> Launch:
    """One ``python train.py`` (plus the ranks its first Trainer starts) running ``configs`` in order."""
    for c in configs:
        (root / c["name"]).mkdir()
    (root / "configs.json").write_text(json.dumps(configs))
    (root / "train.py").write_text(SCRIPT)
    env = child_env()
    # A session of its own, so that a timeout ends the launched ranks too, not only rank 0.
    proc = subprocess.Popen([sys.executable, str(root / "train.py"), str(root)], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        stderr += f"\n[the launch was killed after {timeout} s]"
    return Launch(root, proc.returncode, stderr)


def _assert_close(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= tol, f"weights differ by {worst:.3g}"


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory):
    """Every 4-process run: 10 steps saved as a sharded checkpoint ("half.ckpt", resumed on 2 and 1
    processes by the launches below), HSDP on a 2 x 2 mesh, then (last: a failure ends the launch) HSDP
    with a ModelCheckpoint every 5 steps and an HSDP resume from its step-15 checkpoint."""
    root = tmp_path_factory.mktemp("four_ranks")
    hsdp_mc = root / "hsdp_ckpt" / "mc"
    return launch(root, [config("fsdp4_half", 4, steps=10, save=str(root / "half.ckpt")),
                         config("hsdp_2x2", 4, hsdp=[2, 2]),
                         config("hsdp_ckpt", 4, hsdp=[2, 2], ckpt_dir=str(hsdp_mc)),
                         config("hsdp_resume", 4, hsdp=[2, 2], resume=str(hsdp_mc / "epoch=0-step=15.ckpt"))],
                  timeout=240)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, four_ranks):
    """The one-process references (plain, no FSDP), then the 4-rank checkpoint resumed on one process
    without FSDP and with it (last: it creates the process group that the plain runs do without)."""
    half = str(four_ranks.root / "half.ckpt")
    return launch(tmp_path_factory.mktemp("one_process"), [
        config("single", 1, fsdp=False),
        config("single_acc", 1, fsdp=False, accumulate=2, clip=0.05, steps=10),
        config("resume1_plain", 1, fsdp=False, resume=half),
        config("single_val", 1, fsdp=False, val=True, steps=80),
        config("resume1_fsdp", 1, resume=half),
    ], timeout=180)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, four_ranks):
    """Every 2-process run, the sturdiest first (a failure ends the launch): the uninterrupted 20 steps
    ("fsdp2", the reference of the resumes), the checkpoint writers and their resumes, the precisions,
    and last the resume of the 4-rank checkpoint, which depends on another launch."""
    root = tmp_path_factory.mktemp("two_ranks")
    end, full = root / "fsdp2_end", root / "fsdp2_full"
    return launch(root, [
        config("fsdp2", 2),
        config("fsdp2_acc", 2, accumulate=2, clip=0.05, steps=10),
        # ModelCheckpoint every 5 steps (top 2 and last) written with async_save, then
        # trainer.save_checkpoint("end.ckpt") after fit (synchronous: outside a stage nothing would wait)
        config("fsdp2_end", 2, async_save=True, save=str(end / "end.ckpt"), ckpt_dir=str(end / "mc")),
        config("fsdp2_full", 2, steps=10, save=str(full / "full.ckpt"), state_dict_type="full"),
        config("resume_async", 2, resume=str(end / "mc" / "epoch=0-step=15.ckpt")),
        config("resume_full", 2, resume=str(full / "full.ckpt")),
        config("fsdp2_fp16", 2, precision="16-mixed", steps=12),
        config("fsdp2_meta_bf16", 2, meta=True, ac=True, precision="bf16-mixed", steps=8),
        config("fsdp2_val", 2, val=True, steps=80),
        config("resume2", 2, resume=str(four_ranks.root / "half.ckpt")),  # needs the 4-rank launch: last
    ], timeout=360)


@pytest.mark.parametrize("name", ["four_ranks", "one_process", "two_ranks"])
def test_launch_exits_cleanly(request, name):
    run = request.getfixturevalue(name)
    assert run.returncode == 0, run.stderr[-4000:]


def test_two_ranks_match_one_process(one_process, two_ranks):
    single = one_process.result("single")
    sharded = two_ranks.result("fsdp2")
    assert sharded["step"] == 20
    _assert_close(single["weights"], sharded["weights"])
    assert sharded["losses"] == pytest.approx(single["losses"], abs=1e-5)
    # self.log(sync_dist=True) under FSDP: the mean of the ranks' losses, as under DDP
    assert sharded["logged"] == pytest.approx(single["logged"], abs=1e-4)


def test_validate_test_and_predict_under_fsdp_match_one_process(one_process, two_ranks):
    # The sanity check, the end-of-epoch validation inside fit, then validate / test / predict: FSDP's
    # evaluation forward runs under no_grad (inference tensors would break its gathered parameters).
    single, sharded = one_process.result("single_val"), two_ranks.result("fsdp2_val")
    assert sharded["step"] == single["step"] == 80  # one epoch of 640 / 8: it validated and went on training
    _assert_close(single["weights"], sharded["weights"])
    want, got = single["evaluated"], sharded["evaluated"]
    assert set(got) == {"fit_val_loss", "val_loss", "test_loss", "predictions"}
    for key in ("fit_val_loss", "val_loss", "test_loss"):
        assert got[key] == pytest.approx(want[key], abs=1e-5), key
    assert got["val_loss"] == pytest.approx(got["fit_val_loss"], abs=1e-6)
    torch.testing.assert_close(got["predictions"], want["predictions"], atol=1e-5, rtol=1e-5)  # in dataset order


def test_accumulation_and_clipping_match_one_process(one_process, two_ranks):
    single = one_process.result("single_acc")
    sharded = two_ranks.result("fsdp2_acc")
    assert sharded["step"] == 10 and len(sharded["losses"]) == 20
    _assert_close(single["weights"], sharded["weights"])


def test_sharded_checkpoint_resumes_on_other_world_sizes(four_ranks, one_process, two_ranks):
    full = two_ranks.result("fsdp2")  # the uninterrupted 20-step run
    ckpt = str(four_ranks.root / "half.ckpt")
    first = four_ranks.result("fsdp4_half")  # saved on 4 ranks
    assert os.path.isdir(ckpt) and os.path.isfile(os.path.join(ckpt, "surge_meta.pt"))
    assert first["losses"] == pytest.approx(full["losses"][:10], abs=1e-6)
    for launched, name in [(two_ranks, "resume2"), (one_process, "resume1_fsdp"), (one_process, "resume1_plain")]:
        resumed = launched.result(name)
        assert resumed["step"] == 20, name
        assert resumed["losses"] == pytest.approx(full["losses"][10:], abs=1e-5), name
        _assert_close(full["weights"], resumed["weights"])


def test_consolidate_loads_into_plain_module(two_ranks, tmp_path):
    full = two_ranks.result("fsdp2")
    two_ranks.result("fsdp2_end")
    end = two_ranks.root / "fsdp2_end"
    ckpt = str(end / "end.ckpt")
    # ModelCheckpoint writes folders too, and drops the ones that leave the top k
    assert sorted(os.listdir(end / "mc")) == ["epoch=0-step=15.ckpt", "epoch=0-step=20.ckpt", "last.ckpt"]
    assert os.path.isfile(end / "mc" / "last.ckpt" / "surge_meta.pt")
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


def test_full_state_dict_is_one_file(two_ranks):
    ckpt = str(two_ranks.root / "fsdp2_full" / "full.ckpt")
    two_ranks.result("fsdp2_full")
    assert os.path.isfile(ckpt)
    loaded = torch.load(ckpt, weights_only=True)
    assert loaded["state_dict"]["inp.weight"].shape == (9, 8)
    assert set(loaded["optimizer_states"][0]["state"]) == set(range(8))
    resumed = two_ranks.result("resume_full")
    assert resumed["losses"] == pytest.approx(two_ranks.result("fsdp2")["losses"][10:], abs=1e-5)


def test_meta_init_bf16_and_activation_checkpointing(two_ranks):
    """configure_model on the meta device, precision="bf16-mixed" through FSDP's policy, recomputed blocks."""
    run = two_ranks.result("fsdp2_meta_bf16")
    assert run["step"] == 8 and run["dtypes"] == ["torch.float32"]  # sharded master weights stay fp32
    assert all(map(torch.isfinite, torch.tensor(run["losses"])))
    assert run["losses"][-1] < run["losses"][0]
    assert run["weights"]["inp.weight"].shape == (9, 8)


def test_hsdp_four_ranks_match_one_process(one_process, four_ranks):
    """A 2-D mesh: 2 replicas x 2 shards. Gradients are reduce-scattered within each shard group and
    all-reduced across the replicas: the same math as one process on the whole batches."""
    single = one_process.result("single")
    hsdp = four_ranks.result("hsdp_2x2")
    assert hsdp["step"] == 20
    _assert_close(single["weights"], hsdp["weights"])
    assert hsdp["losses"] == pytest.approx(single["losses"], abs=1e-5)


def test_hsdp_checkpoint_resumes_with_uninterrupted_losses(four_ranks):
    """HSDP (2 x 2) saving a sharded checkpoint mid-fit (ModelCheckpoint every 5 steps) leaves training
    unchanged, and an HSDP run resumed from the step-15 checkpoint continues with the losses of the
    run that was never interrupted and ends with its weights."""
    _assert_saved_mid_fit_and_resumed(four_ranks, "hsdp_2x2", "hsdp_ckpt", "hsdp_resume", ranks=4)


def test_async_save_resumes_like_sync(two_ranks):
    """async_save=True: the same training, the checkpoints complete when fit returns (the stale top-k
    ones removed only after the newer one was committed), and they resume with the uninterrupted losses."""
    _assert_saved_mid_fit_and_resumed(two_ranks, "fsdp2", "fsdp2_end", "resume_async", ranks=2)


def _assert_saved_mid_fit_and_resumed(launch, uninterrupted: str, saving: str, resumed: str, ranks: int) -> None:
    """Run ``saving`` (ModelCheckpoint every 5 of 20 steps, top 2 + last) trained exactly as
    ``uninterrupted``; its folder holds only committed checkpoints with every rank's part (no temporary
    folders left); ``resumed`` (from step 15) continues with the uninterrupted losses and weights."""
    full = launch.result(uninterrupted)
    mc = launch.root / saving / "mc"
    run = launch.result(saving)
    assert run["losses"] == full["losses"]
    _assert_close(full["weights"], run["weights"], tol=0)
    assert sorted(os.listdir(mc)) == ["epoch=0-step=15.ckpt", "epoch=0-step=20.ckpt", "last.ckpt"]
    parts = {".metadata", "surge_meta.pt"} | {f"__{rank}_0.distcp" for rank in range(ranks)}
    for name in os.listdir(mc):
        assert parts <= set(os.listdir(mc / name)), name
    after = launch.result(resumed)
    assert after["step"] == 20
    assert after["losses"] == pytest.approx(full["losses"][15:], abs=1e-5)
    _assert_close(full["weights"], after["weights"])


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


def test_fp16_mixed_with_sharded_grad_scaler(two_ranks):
    """precision="16-mixed": float16 compute through FSDP's policy, float32 master weights, and a scaler
    that sees inf in any rank's gradient shard, so that every rank skips the same steps (the initial
    scale 2**16 overflows float16 gradients at first: some steps are skipped)."""
    run = two_ranks.result("fsdp2_fp16")
    assert run["step"] == 12 and run["dtypes"] == ["torch.float32"]
    assert run["skipped"][0] == run["skipped"][1] and 1 <= run["skipped"][0] < 12, run["skipped"]
    assert all(map(torch.isfinite, torch.tensor(run["losses"])))
    assert sum(run["losses"][-4:]) < sum(run["losses"][:4])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_cuda_mixed_precision_and_async_save(tmp_path, precision):
    """Written without a GPU and not run yet: one CUDA process (NCCL for training, the gloo group for the
    background writes), FSDP's float16 / bf16 policy, async checkpoints that resume (in the same launch)."""
    mc = tmp_path / "cuda" / "mc"
    cuda = dict(accelerator="cuda", precision=precision)
    done = launch(tmp_path, [config("cuda", 1, steps=12, async_save=True, ckpt_dir=str(mc), **cuda),
                             config("cuda_resume", 1, steps=12, resume=str(mc / "epoch=0-step=10.ckpt"), **cuda)],
                  timeout=180)
    run = done.result("cuda")
    assert run["step"] == 12 and run["dtypes"] == ["torch.float32"]
    assert all(map(torch.isfinite, torch.tensor(run["losses"])))
    assert {"epoch=0-step=10.ckpt", "last.ckpt"} <= set(os.listdir(mc))
    resumed = done.result("cuda_resume")
    assert resumed["step"] == 12
    assert resumed["losses"] == pytest.approx(run["losses"][10:], abs=1e-3)
    assert done.returncode == 0, done.stderr[-4000:]


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
    clear_launch_vars(monkeypatch)
    with pytest.raises(MisconfigurationError, match=r"hsdp=\(2, 2\).*4 processes.*has 2"):
        surge.Trainer(strategy=FSDP(hsdp=(2, 2)), accelerator="cpu", devices=2)
    with pytest.raises(MisconfigurationError, match="cpu_offload"):
        surge.Trainer(strategy=FSDP(cpu_offload=True), accelerator="cpu", devices=2)


@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)])
def test_mixed_precision_maps_to_fsdp_policy(monkeypatch, precision, dtype):
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    clear_launch_vars(monkeypatch)
    strategy = surge.Trainer(strategy="fsdp", accelerator="cpu", devices=2, precision=precision).strategy
    policy = strategy._fsdp_kwargs()["mp_policy"]
    assert (policy.param_dtype, policy.reduce_dtype, policy.output_dtype) == (dtype, torch.float32, None)
    assert strategy._fsdp_kwargs(root=True)["mp_policy"].output_dtype == torch.float32  # the loss, in float32
    assert isinstance(strategy.precision.scaler, ShardedGradScaler) == (dtype == torch.float16)


def test_registered_by_name():
    assert "fsdp" in surge.strategies.strategy_names()
