"""benchmarks/ddp_step_segments.py starts two processes, times both loops part by part and prints its table:
a smoke run at a tiny size (the figures themselves are in docs/benchmarks.md)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from launch_env import child_env

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_prints_every_part_of_both_steps_and_the_threads():
    env = child_env(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ddp_step_segments.py"), "--pairs", "1",
                           "--steps", "5", "--width", "16", "--batch", "4"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    plain, ours = out.split("\nplain DDP loop: ", 1)[1].split("\nsurge ddp: ", 1)
    assert len(re.findall(r"^  \S.* +\d+ us$", plain, re.M)) == 5  # forward, backward, step... of the hand loop
    assert len(re.findall(r"^  \S.* +-?\d+ us$", ours, re.M)) == 7  # the same step cut at surge's hooks
    for side in (plain, ours):
        total = float(re.match(r"(?:sum of the part medians )(\d+) us/step", side).group(1))
        assert total > 0
        assert re.search(r"CPU time per step, by thread \(us\):.*\bpython [1-9]\d*", side)  # the main thread worked
