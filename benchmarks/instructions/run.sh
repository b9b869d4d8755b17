#!/usr/bin/env bash
# Instructions per training step, plain PyTorch loop against surge, counted by valgrind's callgrind:
# unlike wall time, the count does not change when other jobs load the machine.
#   bash benchmarks/instructions/run.sh          one process, MLP width 8, batch 2 (W, B, N1, N2 to change)
#   DDP=1 W=256 B=64 N1=30 N2=130 bash benchmarks/instructions/run.sh   rank 0 of two gloo processes
#   KEEP=dir ...    also copy callgrind's outputs (cg.out.<n>, one per dump) and the logs to dir, for callgrind_annotate
# Needs valgrind and its headers (Debian: valgrind), gcc; takes 3-10 minutes.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd); here=$root/benchmarks/instructions
py=${PYTHON:-$root/.venv/bin/python}
work=$(mktemp -d); trap 'if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/cg.out* "$work"/log* "$KEEP"/; fi; rm -rf "$work"' EXIT
gcc -O2 -shared -fPIC -o "$work/cgtoggle.so" "$here/cgtoggle.c"
export CGTOGGLE=$work/cgtoggle.so OMP_NUM_THREADS=1 PYTHONPATH=$root/src${PYTHONPATH:+:$PYTHONPATH}
# --separate-threads=yes: a dump (cg_stop) then holds the calling, main thread only (cg.out.<dump>-01), so the count
# is the step loop's own work, without gloo's threads (the all-reduce itself, the same on both sides, and their
# polling, which varies with timing); other threads are dumped once at exit, under no step name. Without it a DDP
# rank's "summary:" line disagreed with the dump's own cost lines ("totals:") by up to 33M instructions (surge's 30
# steps came out below the plain loop's 30); per thread the two agree. The parse reads "totals:".
cg="valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes --callgrind-out-file=$work/cg.out"
if [ "${DDP:-0}" = 1 ]; then
    export MASTER_ADDR=127.0.0.1 MASTER_PORT=$((20000 + RANDOM % 20000)) WORLD_SIZE=2
    RANK=0 LOCAL_RANK=0 $cg "$py" "$here/steps.py" > "$work/log0" 2>&1 &
    RANK=1 LOCAL_RANK=1 "$py" "$here/steps.py" > "$work/log1" 2>&1
    wait
else
    $cg "$py" "$here/steps.py" > "$work/log0" 2>&1
fi
"$py" - "$work" "${N1:-100}" "${N2:-400}" <<'PY'
import glob, re, sys
work, n1, n2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
count = {}
for f in glob.glob(work + "/cg.out*"):
    text = open(f).read()
    name = re.search(r"^desc: Trigger: Client Request: (\S+)", text, re.M)
    total = re.search(r"^totals: (\d+)", text, re.M)
    if name and total:
        count[name.group(1)] = count.get(name.group(1), 0) + int(total.group(1))
per = {side: (count[f"{side}-{n2}"] - count[f"{side}-{n1}"]) / (n2 - n1) for side in ("plain", "surge")}
print(f"instructions per step: plain {per['plain']:,.0f}  surge {per['surge']:,.0f}  "
      f"ratio {per['surge'] / per['plain']:.3f}  surge adds {per['surge'] - per['plain']:,.0f}")
PY
