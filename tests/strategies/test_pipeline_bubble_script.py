"""benchmarks/pipeline_bubble.py starts, runs surge and torch by hand in the same two processes, and prints
its table: a smoke run at a tiny size (the figures themselves are in docs/benchmarks.md)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from launch_env import child_env

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_prints_both_schedules_with_bubbles_and_theory():
    env = child_env(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pipeline_bubble.py"), "--microbatches", "2",
                           "--rounds", "1", "--steps", "2", "--width", "32", "--rows", "4"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "blocks per rank [[0, 1, 2, 3], [4, 5, 6, 7]]" in out  # surge's split is the hand-made one
    for schedule in ("GPipe", "1F1B"):
        section = out.split(f"\n{schedule}\n", 1)[1]
        row = re.search(r"^\s+2\s+(\S+) \|\s+(\S+)\s+(\S+) \|\s+(\S+)\s+(\S+) \|", section, re.M)
        assert row is not None, section[:500]
        theory, *bubbles = (float(v) for v in row.groups())
        assert theory == 0.333  # (p-1)/(m+p-1) with p=2, m=2
        assert all(0.0 <= b < 1.0 for b in bubbles)  # busy time was measured inside the schedules on both sides
        assert re.search(r"\| +[+-]\d+\.\d\s+(yes|NO)$", section[row.start():].splitlines()[0])  # the paired diff
