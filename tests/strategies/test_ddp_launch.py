"""Launching DDP across "machines", and the launch mistakes that must be clear errors.

The 2-node run is two torchrun invocations on one machine (``--nnodes 2`` on loopback), started
together, each with one process: what two real machines would run, with 127.0.0.1 as rank 0's address.
"""
import os
import socket
import subprocess
import sys

import pytest
import torch

import surge
from surge.demos.toy import ToyModel
from surge.launch import find_free_port
from surge.utils import MisconfigurationError

TWO_NODES = r'''
import os, sys
import torch
import surge
from surge.demos.toy import ToyModel

out = sys.argv[1]
trainer = surge.Trainer(strategy="ddp", accelerator="cpu", devices=1, num_nodes=2, max_steps=8, logger=False,
                        callbacks=[surge.ModelCheckpoint(dirpath=os.path.join(out, "ckpts"), save_last=True)],
                        enable_progress_bar=False, enable_model_summary=False)
model = ToyModel()
trainer.fit(model)
torch.save({"ranks": (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank),
            "step": trainer.global_step, "weights": model.state_dict()},
           os.path.join(out, f"rank{trainer.global_rank}.pt"))
'''

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR", "TORCHELASTIC_RUN_ID",
               "SURGE_LAUNCHER_PID", "NODE_RANK", "GROUP_RANK", "SLURM_NTASKS")


@pytest.fixture
def clean_env(monkeypatch):
    for key in LAUNCH_VARS:
        monkeypatch.delenv(key, raising=False)


def test_two_nodes_on_loopback_train_and_checkpoint(tmp_path):
    script = tmp_path / "two_nodes.py"
    script.write_text(TWO_NODES)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    port = find_free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
                               str(script), str(tmp_path)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for node in (0, 1)]
    try:
        outputs = [p.communicate(timeout=60)[0] for p in nodes]
    finally:
        for p in nodes:
            p.kill()
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(outputs)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    # (world_size, global_rank, local_rank, node_rank): each machine knows which one it is.
    assert r0["ranks"] == (2, 0, 0, 0) and r1["ranks"] == (2, 1, 0, 1)
    assert r0["step"] == r1["step"] == 8  # two epochs of 4 steps (64 samples, 8 per rank per step)
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])
    ckpts = sorted(os.listdir(tmp_path / "ckpts"))
    assert "last.ckpt" in ckpts and not [n for n in ckpts if n.startswith(".tmp")]
    saved = torch.load(tmp_path / "ckpts" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 8
    assert all(torch.equal(saved["state_dict"][k], r0["weights"][k]) for k in r0["weights"])


def test_master_port_already_in_use_is_a_clear_error(clean_env, monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # (set through monkeypatch so that it is undone)
        monkeypatch.setenv("MASTER_PORT", str(port))
        trainer = surge.Trainer(strategy="ddp", accelerator="cpu", devices=1, max_steps=1, logger=False,
                                enable_progress_bar=False, enable_model_summary=False)
        with pytest.raises(MisconfigurationError, match=f"MASTER_PORT={port} is already in use"):
            trainer.fit(ToyModel())
    assert not torch.distributed.is_initialized()


def test_rank_without_master_addr_is_a_clear_error(clean_env, monkeypatch):
    # A hand-made launcher that sets the ranks but not where rank 0 listens.
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(MisconfigurationError, match="RANK=1 and WORLD_SIZE=2 are set .* but MASTER_ADDR is not"):
        surge.Trainer(strategy="ddp", accelerator="cpu", devices=2, logger=False)
    monkeypatch.delenv("MASTER_PORT")
    with pytest.raises(MisconfigurationError, match="MASTER_ADDR and MASTER_PORT are not"):
        surge.Trainer(strategy="ddp", accelerator="cpu", devices=2, logger=False)


def test_more_gpus_than_the_machine_has_is_a_clear_error(clean_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(MisconfigurationError, match=r"devices=8 asks for cuda device\(s\) .* this machine has 2"):
        surge.Trainer(strategy="ddp", accelerator="cuda", devices=8, logger=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MisconfigurationError, match="accelerator='cuda' but torch finds no CUDA device"):
        surge.Trainer(strategy="ddp", accelerator="cuda", devices=8, logger=False)


def test_surge_demo_uses_every_core_with_ddp_by_default(tmp_path):
    pytest.importorskip("sklearn")
    if torch.cuda.is_available():
        pytest.skip("with a GPU the demo trains on one GPU")
    surge_cmd = os.path.join(os.path.dirname(sys.executable), "surge")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    proc = subprocess.run([surge_cmd, "demo", "--max-epochs", "3", "--no-progress-bar", "--root-dir", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("test accuracy:") == 1  # printed by rank 0 only
    accuracy = float(proc.stdout.split("test accuracy:")[1].split()[0])
    assert accuracy > 0.9
    saved = (tmp_path / "surge_logs" / "version_0" / "config.yaml").read_text()
    processes = min(os.cpu_count() or 1, 4)
    assert f"devices: {processes}" in saved and ("strategy: ddp" in saved if processes > 1 else True)


def test_a_launched_rank_watches_its_parent_with_one_thread_however_many_stages():
    # fit, validate and test each set up the strategy's environment; the watch on rank 0 starts once.
    code = ("import os, threading\n"
            "from surge.launch import watch_parent\n"
            "os.environ['SURGE_LAUNCHER_PID'] = str(os.getppid())\n"
            "for _ in range(3):\n"
            "    watch_parent()\n"
            "print(sum(t.name == 'surge-parent-watch' for t in threading.enumerate()))\n")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "src")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1"]
