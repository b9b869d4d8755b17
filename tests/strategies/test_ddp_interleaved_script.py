"""Smoke test of benchmarks/ddp_interleaved.py: a tiny run of the comparison and of a same-work control starts
two processes, takes both steps in turns and prints one row per fit with both clocks."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from launch_env import child_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode", ["surge", "aa-before"])
def test_tiny_run_prints_a_row_per_fit_with_both_clocks(mode):
    env = child_env(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ddp_interleaved.py"), "--mode", mode,
                           "--reps", "2", "--steps", "20", "--width", "16", "--batch", "4"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"mode {mode}" in proc.stdout
    rows = re.findall(r"^(\d) \| (\d+) \| (\d+) \| ([\d.]+) \| (\d+) \| (\d+) \| ([\d.]+)$", proc.stdout, re.M)
    assert [r[0] for r in rows] == ["0", "1"], proc.stdout
    for _, pw, sw, ratio, pc, sc, cratio in rows:
        assert int(pw) > 0 and int(sw) > 0 and int(pc) > 0 and int(sc) > 0  # both sides ran steps, both clocks read
        assert _rounded_ratio_fits(ratio, sw, pw) and _rounded_ratio_fits(cratio, sc, pc), proc.stdout


def _rounded_ratio_fits(ratio, num, den):
    """The row prints each time rounded to a microsecond and the ratio of the unrounded times to three places:
    the ratio must lie between the extremes that the rounded times allow."""
    num, den, ratio = int(num), int(den), float(ratio)
    low = (num - 0.5) / (den + 0.5) - 0.0005
    high = (num + 0.5) / (den - 0.5) + 0.0005
    return low <= ratio <= high
