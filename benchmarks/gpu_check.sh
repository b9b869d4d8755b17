#!/usr/bin/env bash
# Every GPU path of surge in one call, under 8 minutes on one H100/H200:
#   1. tests/gpu_checks.py: every precision, fp16 inf skip, fused Adam, TF32, the CUDA prefetcher, compile,
#      CUDA graphs, DeviceStatsMonitor with NVML, ThroughputMonitor's MFU (pass / fail / skip per check);
#   2. benchmarks/lightning_gan.py: Lightning's GAN example script, unmodified, in zero-edit mode (its main() asks
#      for accelerator="gpu"); read from $PL_REPO or .lightning/ (bash benchmarks/lightning_checkout.sh GIT_DIR);
#   3. benchmarks/cuda_graph.py: tiny MLP us/step, plain / surge / surge+cuda_graphs / Lightning;
#   4. benchmarks/gpt_mfu.py: GPT-2-small bf16 tokens/s, MFU and peak memory, plain / surge / Lightning,
#      eager (one step), then compiled (one step per run: a compile is what may hang).
# Then one summary table on stdout and in gpu_check.md.
#
# Usage, from anywhere:   OUT=/some/dir bash benchmarks/gpu_check.sh
# OUT: where logs/, json/, steps.tsv and gpu_check.md go (default: a new temporary directory, named at the end).
# PYTHON: the interpreter (default: python, else python3). GPU_CHECK_BUDGET: seconds for all steps (440).
# Needs torch with CUDA, numpy, and optionally Lightning and nvidia-ml-py; never installs or downloads anything.
# Every step is bounded by `timeout` (TERM at its limit, KILL 5 s later); one that runs past its limit shows
# "timeout" and the script goes on. A step that would start with less than 20 s of the budget left is not
# started ("no time"), and no step's limit reaches past the budget (what runs before the steps counts in it),
# so the whole script ends within BUDGET + 5 + 15 + 5 s (the last step's KILL, the report's limit and its
# KILL): 465 s by default, under 8 minutes (tests/test_gpu_check.py holds these numbers to that).
# On a machine without CUDA every step still starts and reports "needs CUDA".
# Exit status: 0 when every step is ok or "needs CUDA", 1 when one failed, timed out or was not started.
set -u

if [ -z "${PYTHON:-}" ]; then
    if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$OUT/logs" "$OUT/json" || exit 1
# OUT and a PYTHON given as a path are the caller's, relative to where it was called from: made absolute
# before the script moves to the repository's root
OUT=$(cd "$OUT" && pwd) || exit 1
case "$PYTHON" in */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;; esac
cd "$(dirname "$0")/.." || exit 1
BUDGET=${GPU_CHECK_BUDGET:-440}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
KILL_AFTER=5     # seconds from a step's TERM to its KILL
REPORT_LIMIT=15  # seconds for the report
STEPS="$OUT/steps.tsv"
printf 'step\trc\tseconds\tlimit\n' > "$STEPS"
START=$SECONDS

# step NAME LIMIT COMMAND...: run COMMAND with its output in logs/NAME.log, at most LIMIT seconds (less when
# the budget is nearly spent), and record its exit status (124/137: timed out; -1: not started, no time).
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 20 ]; then
        printf '%s\t-1\t0\t0\n' "$name" >> "$STEPS"
        echo "== $name: not started, $left s of the ${BUDGET} s budget left"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most $limit s)"
    rm -f "$OUT/json/$name.json"  # a result left by an earlier run into the same OUT must not stand for this one
    local t0=$SECONDS
    timeout -k "$KILL_AFTER" "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >> "$STEPS"
    tail -n 3 "$OUT/logs/$name.log" | sed 's/^/   /'
}

echo "gpu_check: logs and tables under $OUT; budget ${BUDGET} s; $(timeout -k 2 10 "$PYTHON" --version 2>&1)"
command -v nvidia-smi >/dev/null 2>&1 &&
    timeout -k 2 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# torch's answer and the packages found, once (json/env.json, for the report's header). Each step asks the CUDA
# driver first, without importing torch, so that on a CPU it says "needs CUDA" in a blink; where torch sees
# CUDA, the steps leave the question to torch alone (benchmarks/cuda_probe.py).
timeout -k 2 60 "$PYTHON" benchmarks/cuda_probe.py --json "$OUT/json/env.json" > "$OUT/logs/env.log" 2>&1
sed 's/^/   /' "$OUT/logs/env.log"
grep -q '"torch_cuda": true' "$OUT/json/env.json" 2>/dev/null && export GPU_CHECK_SKIP_PROBE=1

# Budget on an H100 (estimates, not yet measured): checks ~90 s (the compile check most of it), the GAN ~30 s
# (its offline MNIST is built on the CPU), MLP ~30 s,
# GPT eager ~40 s, GPT compiled ~60-90 s for the first compile and less for the next two (the inductor
# cache on disk is shared by the three processes).
step tests 150 "$PYTHON" tests/gpu_checks.py --check-timeout 100 --json "$OUT/json/tests.json"
step lightning-gan 60 "$PYTHON" benchmarks/lightning_gan.py --timeout 50 --json "$OUT/json/lightning-gan.json"
step mlp 75 "$PYTHON" benchmarks/cuda_graph.py --pairs 3 --steps 300 --json "$OUT/json/mlp.json"
GPT="benchmarks/gpt_mfu.py --batch 32 --warmup 5 --steps 15"
step gpt-eager 90 "$PYTHON" $GPT --compile off --runs plain,surge,lightning --run-timeout 40 \
    --json "$OUT/json/gpt-eager.json"
for run in plain surge lightning; do
    step "gpt-compiled-$run" 150 "$PYTHON" $GPT --compile on --runs "$run" --run-timeout 140 \
        --json "$OUT/json/gpt-compiled-$run.json"
done

timeout -k "$KILL_AFTER" "$REPORT_LIMIT" "$PYTHON" benchmarks/gpu_check_report.py "$OUT"
rc=$?
[ "$rc" -gt 1 ] && echo "gpu_check: the report itself failed (rc $rc); see $OUT"
echo "gpu_check: $((SECONDS - START)) s in all; table in $OUT/gpu_check.md, logs in $OUT/logs"
[ "$rc" -eq 0 ] && exit 0
exit 1
