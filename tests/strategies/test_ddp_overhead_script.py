"""Smoke test of benchmarks/ddp_overhead.py: a tiny run of surge against the plain DDP loop, and the A/A run
(``--aa``, the plain loop on both sides), each print both medians, one pair of step times per pair, and what
a fit costs outside its steps, and where the ranks ran (each on its own cores, or with --no-bind where the OS
put them); --launches pools the pairs of several launches; a bad --skip or --launches is refused."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from launch_env import child_env
from surge import cores

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("aa", [False, True])
def test_tiny_run_prints_medians_and_a_ratio_per_pair(aa):
    env = child_env(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    # (the A/A run also leaves the placement to the OS)
    args = ["--pairs", "3", "--steps", "10", "--width", "16", "--batch", "4"] + (["--aa", "--no-bind"] if aa else [])
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ddp_overhead.py"), *args],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    blocks = None if aa else cores.core_blocks(2)
    placed = f"on cores {' / '.join(map(str, blocks))}" if blocks else "placed by the OS"
    assert re.search(rf"^torch \S+, 2 processes x \d+ thread\(s\) {re.escape(placed)}, gloo, ", out, re.M), out
    other = "plain again" if aa else "surge ddp"
    assert re.search(r"^plain DDP loop +\d+\.\d us/step \(median\)$", out, re.M), out
    assert re.search(rf"^{other} +\d+\.\d us/step \(median\)$", out, re.M), out
    pairs = re.search(r"^pairs \(plain, (plain again|surge) us/step\): (.*)$", out, re.M)
    assert pairs and pairs.group(1) == ("plain again" if aa else "surge"), out
    times = [(int(x), int(y)) for x, y in re.findall(r"\((\d+), (\d+)\)", pairs.group(2))]
    assert len(times) == 3 and all(x > 0 and y > 0 for x, y in times), out
    assert re.search(rf"^per fit, outside the steps \(median\): plain -?\d+\.\d\d ms, {other.replace(' ddp', '')} "
                     r"-?\d+\.\d\d ms$", out, re.M), out
    median = re.search(r"^median of the pair ratios: (\d+\.\d{3}) \(95% bootstrap interval (\d+\.\d{3})-(\d+\.\d{3}); "
                       r"pairs (\d+\.\d{3})-(\d+\.\d{3})\)$", out, re.M)
    assert median, out
    mid, low, high, least, most = map(float, median.groups())
    assert least <= low <= mid <= high <= most, out
    assert re.search(r"^whole fits \(steps and the rest\): median of the pair ratios \d+\.\d{3}$", out, re.M), out


def test_launches_are_pooled():
    env = child_env(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    args = ["--pairs", "2", "--launches", "2", "--steps", "8", "--width", "16", "--batch", "4"]
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ddp_overhead.py"), *args],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert re.findall(r"^launch (\d) of 2$", out, re.M) == ["1", "2"], out
    per_launch = [float(x) for x in re.findall(r"^median of the pair ratios: (\d+\.\d{3}) ", out, re.M)]
    assert len(per_launch) == 2, out
    pooled = re.search(r"^all 2 launches, 4 pairs: median of the pair ratios (\d+\.\d{3}) \(95% bootstrap interval "
                       r"(\d+\.\d{3})-(\d+\.\d{3})\); per launch: (\d+\.\d{3}), (\d+\.\d{3})$", out, re.M)
    assert pooled, out
    # the per-launch medians it lists are the ones each launch printed
    assert [float(pooled.group(4)), float(pooled.group(5))] == per_launch, out
    assert float(pooled.group(2)) <= float(pooled.group(1)) <= float(pooled.group(3)), out
    assert re.search(r"^all launches, whole fits: median of the pair ratios \d+\.\d{3}$", out, re.M), out


def test_skip_must_leave_steps_to_time():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ddp_overhead.py"), "--steps", "10", "--skip", "9"],
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 2 and "--skip must be at least 0 and below --steps - 1 (9), got 9" in proc.stderr


def test_launches_must_be_positive():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ddp_overhead.py"), "--launches", "0"],
                          capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 2 and "--pairs and --launches must be at least 1, got --pairs 30 --launches 0" in proc.stderr
