"""benchmarks/ddp_step_segments.py starts two processes, times both loops part by part and prints its table:
a smoke run at a tiny size (the figures themselves are in docs/benchmarks.md)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_prints_every_part_of_both_steps_and_the_threads():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT",
                                                            "MASTER_ADDR", "TORCHELASTIC_RUN_ID")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
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
