"""Smoke test of benchmarks/ddp_overhead.py: a tiny run of surge against the plain DDP loop, and the A/A run
(``--aa``, the plain loop on both sides), each print both medians and one ratio per pair."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from launch_env import child_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("aa", [False, True])
def test_tiny_run_prints_medians_and_a_ratio_per_pair(aa):
    env = child_env(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    args = ["--pairs", "3", "--steps", "10", "--width", "16", "--batch", "4"] + (["--aa"] if aa else [])
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ddp_overhead.py"), *args],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    other = "plain again" if aa else "surge ddp"
    assert re.search(r"^plain DDP loop +\d+\.\d us/step \(median\)$", out, re.M), out
    assert re.search(rf"^{other} +\d+\.\d us/step \(median\)$", out, re.M), out
    pairs = re.search(r"^pairs \(plain, (plain again|surge) us/step\): (.*)$", out, re.M)
    assert pairs and pairs.group(1) == ("plain again" if aa else "surge"), out
    assert len(re.findall(r"\((\d+), (\d+)\)", pairs.group(2))) == 3
