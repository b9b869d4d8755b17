"""Local ranks share the machine's cores: each gets ``cores // local ranks`` torch threads unless the
user chose a number, and asking for more CPU processes than cores is warned about."""
import os
import subprocess
import sys

import pytest
import torch

import surge
from surge import cores
from surge.utils import MisconfigurationError
from surge.warnings import PossibleUserWarning

SCRIPT = r'''
import os, sys
import torch
import surge
from surge.demos.toy import ToyModel

class Record(surge.Callback):
    def on_train_start(self, trainer, module):
        # the cores of every thread of this rank (torch's, gloo's): one set where the launcher bound the rank
        cores = {tuple(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir("/proc/self/task")}
        with open(os.path.join(sys.argv[1], f"rank{trainer.global_rank}.txt"), "w") as f:
            cores = repr(sorted(cores)).replace(" ", "")
            f.write(f"{torch.get_num_threads()} {os.environ.get('OMP_NUM_THREADS')} {cores}")

if __name__ == "__main__":  # ddp_spawn's workers import this file
    trainer = surge.Trainer(strategy=sys.argv[2], accelerator="cpu", devices=2, max_steps=2, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[Record()])
    trainer.fit(ToyModel())
'''

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR", "TORCHELASTIC_RUN_ID",
               "SURGE_LAUNCHER_PID", "NODE_RANK", "GROUP_RANK", "SLURM_NTASKS", "OMP_NUM_THREADS")


def run_two_ranks(tmp_path, strategy, **extra_env):
    script = tmp_path / "threads.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(extra_env)
    done = subprocess.run([sys.executable, str(script), str(tmp_path), strategy], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr, [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_each_local_rank_gets_its_share_of_the_cores(tmp_path, strategy):
    out, ranks = run_two_ranks(tmp_path, strategy)
    blocks = cores.core_blocks(2)
    share = max(1, cores.usable_cores() // 2)
    if blocks:
        share = min(share, *map(len, blocks))
    assert [r[:2] for r in ranks] == [[str(share), str(share)]] * 2
    assert out.count("2 local processes on") == 1 and f"{share} torch thread(s) each" in out
    if blocks:  # every thread of each rank, its own block of physical cores
        assert [r[2] for r in ranks] == [repr([tuple(b)]).replace(" ", "") for b in blocks]
        assert "; each on its own cores: local rank 0 on CPU " in out
        assert "take turns on the cores" not in out  # a bound rank still counts the cores all the ranks share
    else:
        pytest.skip("fewer than 2 physical cores, or no CPU binding on this OS: the threads' share only")


def test_surge_bind_cores_0_leaves_the_placement_to_the_os(tmp_path):
    out, ranks = run_two_ranks(tmp_path, "ddp", SURGE_BIND_CORES="0")
    everything = repr([tuple(sorted(os.sched_getaffinity(0)))]).replace(" ", "")
    assert [r[2] for r in ranks] == [everything] * 2
    assert "each on its own cores" not in out


def test_a_surge_bind_cores_other_than_0_or_1_is_refused_naming_it(monkeypatch):
    monkeypatch.setenv("SURGE_BIND_CORES", "false")
    with pytest.raises(MisconfigurationError, match=r"SURGE_BIND_CORES must be 0 .* or 1 .*got 'false'"):
        cores.share_machine(2, {}, here=False, cpu=True)


def test_core_blocks_keep_hyperthreads_together_and_divide_whole_cores(monkeypatch):
    # 6 physical cores with two hyperthreads each, numbered as Linux does: cpu i and i + 6 share a core
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))
    monkeypatch.setattr(cores, "_core_of", lambda cpu: f"{cpu % 6},{cpu % 6 + 6}")
    assert cores.core_blocks(2) == [[0, 1, 2, 6, 7, 8], [3, 4, 5, 9, 10, 11]]
    assert cores.core_blocks(4) == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 10], [5, 11]]  # 6 cores: 2, 2, 1, 1
    assert cores.core_blocks(6) == [[c, c + 6] for c in range(6)]
    assert cores.core_blocks(7) is None  # more processes than physical cores: the OS places them
    assert cores.core_blocks(1) is None


def test_share_threads_rules(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cores, "usable_cores", lambda: 16)
    monkeypatch.setattr(cores, "_physical_cores", lambda: 8)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)  # torch's default: the physical cores
    assert cores.share_threads(4) == 4
    assert cores.share_threads(32) == 1  # never zero
    assert cores.share_threads(1) is None  # one process keeps every core
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # the user called torch.set_num_threads(3)
    assert cores.share_threads(4) is None
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cores.share_threads(4) is None


def test_more_cpu_processes_than_cores_warns():
    many = cores.usable_cores() + 1
    with pytest.warns(PossibleUserWarning, match=rf"devices={many} starts {many} processes on a machine with"):
        surge.Trainer(strategy="ddp", accelerator="cpu", devices=many, logger=False)
