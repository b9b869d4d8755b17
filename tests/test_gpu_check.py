"""benchmarks/gpu_check.sh on a CPU: every step starts, says "needs CUDA" and leaves its log and result under
$OUT, the summary table is written, the limits are the ones the script states (under 8 minutes in all), and a
step that fails, crashes or times out is reported as such, never as passed. Nothing here needs a GPU: CUDA is
hidden (CUDA_VISIBLE_DEVICES=""), and failures come from a stand-in interpreter (PYTHON=) that plays one
script's part and hands every other call to the real one.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_check_report  # noqa: E402
import lightning_import  # noqa: E402

# step -> its limit in seconds, as gpu_check.sh declares them
STEPS = {"tests": 150, "lightning-gan": 60, "mlp": 75, "gpt-eager": 90, "gpt-compiled-plain": 150, "gpt-compiled-surge": 150,
         "gpt-compiled-lightning": 150}
ISSUE_LIMIT_S = 8 * 60


def run_check(out, *, python=sys.executable, timeout=240, **extra_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_CHECK_", "SURGE_"))}
    env.update(OUT=str(out), PYTHON=python, CUDA_VISIBLE_DEVICES="", **extra_env)
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - t0


def steps_tsv(out) -> dict:
    with open(os.path.join(out, "steps.tsv")) as f:
        header, *rows = [line.rstrip("\n").split("\t") for line in f]
    assert header == ["step", "rc", "seconds", "limit"]
    return {name: {"rc": int(rc), "seconds": int(s), "limit": int(limit)} for name, rc, s, limit in rows}


def steps_table(md: str) -> dict:
    """step -> status, from gpu_check.md's "Steps" table."""
    section = md[md.index("## Steps"):]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| ([\w-]+) \| ([^|]+?) \| \d+ \| \d+ \| logs/", section,
                                                        re.MULTILINE)}


def read(path) -> str:
    with open(path) as f:
        return f.read()


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc, seconds = run_check(out)
    return proc, out, seconds


# ------------------------------------------------------------------------------------------- the CPU check
def test_on_a_cpu_every_step_starts_and_says_needs_cuda(cpu_run):
    proc, out, seconds = cpu_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = steps_tsv(out)
    assert list(steps) == list(STEPS)
    for name in STEPS:
        assert steps[name]["rc"] == 0, (name, steps[name], read(out / "logs" / f"{name}.log"))
        assert f"== {name} (at most {STEPS[name]} s)" in proc.stdout
        log = read(out / "logs" / f"{name}.log")
        assert log.startswith("needs CUDA: "), (name, log)
        result = json.loads(read(out / "json" / f"{name}.json"))
        assert result["status"] == "needs CUDA", (name, result)
        # the fast path: the driver probe answered before torch was imported (no "torch" in the result)
        assert result.get("probe") == "no CUDA driver device" and "torch" not in result, (name, result)
    assert seconds < 60, f"the CPU run took {seconds:.0f} s; without CUDA every step should end at once"


def test_the_summary_table_is_written_and_counts_the_needs_cuda_steps(cpu_run):
    proc, out, _ = cpu_run
    md = read(out / "gpu_check.md")
    assert md in proc.stdout  # printed as well as written
    assert steps_table(md) == {name: "needs CUDA" for name in STEPS}
    assert f"steps: {len(STEPS)} needs CUDA\n" in md
    assert re.search(rf"^## Steps: {len(STEPS)} in \d+ s: {len(STEPS)} needs CUDA$", md, re.MULTILINE)
    checks = json.loads(read(out / "json" / "tests.json"))["checks"]
    assert len(checks) >= 10 and {c["status"] for c in checks} == {"needs CUDA"}
    assert f"## Checks (tests/gpu_checks.py): {len(checks)} needs CUDA; step needs CUDA" in md
    for c in checks:
        assert f"| {c['name']} | needs CUDA |" in md
    # every column the issue asks for has its header
    for header in ("| run | us/step | ratio to plain | peak MiB |",
                   "| run | eager tokens/s | eager MFU | eager peak GiB | compiled tokens/s | compiled MFU | "
                   "compiled peak GiB |"):
        assert header in md
    for run in gpu_check_report.MLP_RUNS:
        assert f"| {run} | needs CUDA | needs CUDA | needs CUDA |" in md
    for run in gpu_check_report.GPT_RUNS:
        assert f"| {run} |" + " needs CUDA |" * 6 in md
    env = json.loads(read(out / "json" / "env.json"))
    assert env["torch_cuda"] is False and env["driver_devices"] == 0
    assert os.path.exists(out / "logs" / "env.log")


def test_the_limits_and_budget_are_what_the_script_says(cpu_run):
    proc, out, _ = cpu_run
    text = read(SCRIPT)
    declared = {}
    for m in re.finditer(r'^\s*step "?([\w$-]+)"? (\d+) ', text, re.MULTILINE):
        name, limit = m.group(1), int(m.group(2))
        names = [name.replace("$run", r) for r in ("plain", "surge", "lightning")] if "$run" in name else [name]
        declared.update(dict.fromkeys(names, limit))
    assert declared == STEPS
    assert {n: s["limit"] for n, s in steps_tsv(out).items()} == STEPS  # the budget had room: limits as declared
    budget = int(re.search(r"^BUDGET=\$\{GPU_CHECK_BUDGET:-(\d+)\}$", text, re.MULTILINE).group(1))
    kill = int(re.search(r"^KILL_AFTER=(\d+)", text, re.MULTILINE).group(1))
    report = int(re.search(r"^REPORT_LIMIT=(\d+)", text, re.MULTILINE).group(1))
    worst = budget + kill + report + kill
    assert worst < ISSUE_LIMIT_S
    assert f"BUDGET + {kill} + {report} + {kill} s" in text and f"{worst} s by default" in text
    assert f"; budget {budget} s;" in proc.stdout.splitlines()[0]
    # every command the script runs is bounded: each line that calls the interpreter or nvidia-smi goes
    # through step() (which runs `timeout -k "$KILL_AFTER" "$limit"`) or timeout itself
    assert 'timeout -k "$KILL_AFTER" "$limit" "$@"' in text
    calls = [line for line in text.splitlines()
             if re.search(r'"\$PYTHON" (\S+\.py|--version|\$GPT)|nvidia-smi --', line) and not line.lstrip().startswith("#")]
    assert len(calls) == 9  # 5 step lines (one in a loop), --version, nvidia-smi, the probe, the report
    for line in calls:
        assert re.match(r'\s*step ', line) or "timeout -k " in line, line
    assert 'timeout -k "$KILL_AFTER" "$REPORT_LIMIT" "$PYTHON" benchmarks/gpu_check_report.py' in text


def test_a_small_budget_caps_the_limits_and_unstarted_steps_are_not_passed(tmp_path):
    proc, _ = run_check(tmp_path / "capped", GPU_CHECK_BUDGET="100")
    assert proc.returncode == 0, proc.stdout[-3000:]
    limits = {n: s["limit"] for n, s in steps_tsv(tmp_path / "capped").items()}
    assert list(limits) == list(STEPS) and all(limit <= 100 for limit in limits.values()), limits
    assert limits["tests"] < STEPS["tests"]

    proc, _ = run_check(tmp_path / "spent", GPU_CHECK_BUDGET="10")
    assert proc.returncode == 1, proc.stdout[-3000:]
    steps = steps_tsv(tmp_path / "spent")
    assert list(steps) == list(STEPS) and {s["rc"] for s in steps.values()} == {-1}
    md = read(tmp_path / "spent" / "gpu_check.md")
    assert steps_table(md) == {name: "no time" for name in STEPS}
    assert f"steps: {len(STEPS)} no time (not all passed)" in md


# -------------------------------------------------------------------------------- failures are failures
FAKE_PYTHON = '''#!{python}
"""Plays a failing part for some of gpu_check.sh's calls; hands every other call to the real interpreter."""
import json, os, sys

args = sys.argv[1:]
out = args[args.index("--json") + 1] if "--json" in args else None
if args[:1] == ["tests/gpu_checks.py"]:  # one check fails: the runner writes its result and exits 1
    with open(out, "w") as f:
        json.dump({{"part": "tests", "status": "ok", "device": "fake GPU", "planned": ["a_check", "b_check"],
                   "checks": [{{"name": "a_check", "status": "fail", "detail": "AssertionError: fake", "seconds": 1.0}}]}},
                  f)
    sys.exit(1)
if args[:1] == ["benchmarks/cuda_graph.py"]:  # a crash before any result
    print("Traceback: fake crash", file=sys.stderr)
    sys.exit(3)
if args[:1] == ["benchmarks/gpt_mfu.py"] and "surge" == args[args.index("--runs") + 1]:
    sys.exit(124)  # what timeout(1) returns for a step it stopped
os.execv({python!r}, [{python!r}] + args)
'''


def test_a_failing_crashing_or_timed_out_step_is_reported_as_such(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(0o755)
    out = tmp_path / "out"
    (out / "json").mkdir(parents=True)
    # a result left by an earlier run must not stand in for the crashed step's missing one
    (out / "json" / "mlp.json").write_text(json.dumps({"part": "mlp", "status": "ok", "rows": []}))
    proc, _ = run_check(out, python=str(fake))
    assert proc.returncode == 1, proc.stdout[-3000:]
    steps = steps_tsv(out)
    assert [steps[n]["rc"] for n in STEPS] == [1, 0, 3, 0, 0, 124, 0]
    md = read(out / "gpu_check.md")
    assert steps_table(md) == {"tests": "failed (rc 1)", "lightning-gan": "needs CUDA", "mlp": "error (rc 3, no result)", "gpt-eager": "needs CUDA",
                               "gpt-compiled-plain": "needs CUDA", "gpt-compiled-surge": "timeout",
                               "gpt-compiled-lightning": "needs CUDA"}
    assert "(not all passed)" in md
    assert "## Checks (tests/gpu_checks.py): 1 fail, 1 failed (rc 1); step failed (rc 1)" in md
    assert "| a_check | fail | 1.0 | AssertionError: fake |" in md
    assert "| b_check | failed (rc 1) |" in md  # planned, never reached
    assert "| plain loop | error (rc 3, no result) |" in md
    assert re.search(r"^\| surge \|( needs CUDA \|){3}( timeout \|){3}$", md, re.MULTILINE), md
    assert "fake crash" in read(out / "logs" / "mlp.log")


# ------------------------------------------------------------------------ the report with numbers in it
def test_the_report_fills_every_column_and_says_when_lightning_is_missing(tmp_path):
    """A GPU run's results, made up, as the report reads them: each number lands in its column, and a
    Lightning that is not installed is named in its cells (it does not fail the run)."""
    (tmp_path / "json").mkdir()
    rows = "".join(f"{name}\t0\t10\t{limit}\n" for name, limit in STEPS.items())
    (tmp_path / "steps.tsv").write_text("step\trc\tseconds\tlimit\n" + rows)
    missing = lightning_import.NOT_INSTALLED

    def dump(name, result):
        (tmp_path / "json" / f"{name}.json").write_text(json.dumps(result))

    dump("tests", {"status": "ok", "checks": [{"name": "precision_32-true", "status": "pass", "seconds": 2.0},
                                              {"name": "throughput_monitor_reports_mfu", "status": "skip",
                                               "seconds": 0.1, "detail": "not in the table"}]})
    dump("lightning-gan", {"status": "ok", "seconds": 21.0, "detail": "step 4 reached, checkpoint written"})
    dump("mlp", {"status": "ok", "config": {"batch": 64, "steps": 300, "pairs": 3}, "rows": [
        {"run": "plain loop", "status": "ok", "us_per_step": 200.0, "ratio": 1.0, "peak_mem_mib": 3.0},
        {"run": "surge fit", "status": "ok", "us_per_step": 260.0, "ratio": 1.3, "peak_mem_mib": 3.0},
        {"run": "surge cuda_graphs", "status": "ok", "us_per_step": 50.0, "ratio": 0.25, "peak_mem_mib": 4.0},
        {"run": "lightning fit", "status": missing}]})
    config = {"batch": 32, "steps": 15, "warmup": 5, "block_size": 1024}
    dump("gpt-eager", {"status": "ok", "config": config, "rows": [
        {"run": "plain", "compiled": False, "status": "ok", "tokens_per_s": 400000.0, "mfu": 0.41, "peak_mem_gib": 30.0},
        {"run": "surge", "compiled": False, "status": "ok", "tokens_per_s": 390000.0, "mfu": 0.40, "peak_mem_gib": 31.0},
        {"run": "lightning", "compiled": False, "status": missing}]})
    for run, tps in (("plain", 500000.0), ("surge", 495000.0)):
        dump(f"gpt-compiled-{run}", {"status": "ok", "config": config, "rows": [
            {"run": run, "compiled": True, "status": "ok", "tokens_per_s": tps, "mfu": 0.5, "peak_mem_gib": 20.0}]})
    dump("gpt-compiled-lightning", {"status": "ok", "config": config, "rows": [
        {"run": "lightning", "compiled": True, "status": missing}]})
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check_report.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    md = read(tmp_path / "gpu_check.md")
    assert "| surge cuda_graphs | 50.0 | 0.250 | 4 |" in md
    assert f"| lightning fit | {missing} | {missing} | {missing} |" in md
    assert "| plain | 400,000 | 41.0% | 30.0 | 500,000 | 50.0% | 20.0 |" in md
    assert "| surge | 390,000 | 40.0% | 31.0 | 495,000 | 50.0% | 20.0 |" in md
    assert f"| lightning |" + f" {missing} |" * 6 in md
    assert "## Checks (tests/gpu_checks.py): 1 pass, 1 skip; step ok" in md
    assert ("## Lightning's GAN example, unmodified, zero-edit mode (benchmarks/lightning_gan.py): ok\n\n"
            "step 4 reached, checkpoint written (21.0 s)") in md
    assert f"steps: {len(STEPS)} ok\n" in md


def test_a_lightning_that_fails_to_import_counts_as_not_installed(monkeypatch):
    def broken(name):
        raise RuntimeError(f"{name} was built for another torch")

    monkeypatch.setattr(lightning_import.importlib, "import_module", broken)
    assert lightning_import.import_lightning() is None


def test_the_torch_fallback_also_says_needs_cuda(tmp_path):
    """With GPU_CHECK_SKIP_PROBE=1 (what gpu_check.sh sets where torch sees CUDA) a script asks torch instead
    of the driver probe; torch, with CUDA hidden, sees none either."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", GPU_CHECK_SKIP_PROBE="1")
    path = tmp_path / "mlp.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "cuda_graph.py"), "--json", str(path)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "needs CUDA: cuda_graph.py" in proc.stdout and "torch sees no CUDA device" in proc.stdout
    result = json.loads(path.read_text())
    assert result["status"] == "needs CUDA" and "torch" in result and "probe" not in result


# ------------------------------------------------------------------------------- Lightning's GAN example
def run_gan(tmp_path, **env):
    path = tmp_path / "gan.json"
    full = {k: v for k, v in os.environ.items() if not k.startswith(("GPU_CHECK_", "PL_"))}
    full.update(env)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "lightning_gan.py"), "--json", str(path)],
                          env=full, capture_output=True, text=True, timeout=300)
    return proc, json.loads(path.read_text())


def test_the_gan_step_without_a_lightning_checkout_says_so_and_is_no_failure(tmp_path):
    proc, result = run_gan(tmp_path, GPU_CHECK_SKIP_PROBE="1", PL_REPO=str(tmp_path / "nowhere"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["status"] == "no Lightning checkout" and "lightning_checkout.sh" in result["detail"], result
    assert gpu_check_report.step_status({"rc": 0}, result) == "no Lightning checkout"
    assert gpu_check_report.passed("no Lightning checkout")


def test_the_gan_step_reports_a_run_that_fails_as_failed(tmp_path):
    """Told to skip the probe on this CPU machine, the step runs the real script, whose Trainer(accelerator="gpu")
    surge refuses here: a failure, with surge's words in the detail, never "ok"."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "lightning_examples"))
    import example_runs

    try:
        found = example_runs.read_example(example_runs.EXAMPLES["generative_adversarial_net"].path)
    except example_runs.ExampleError as err:
        pytest.skip(str(err))
    if found is None:
        pytest.skip(f"no Lightning checkout at {example_runs.lightning_repo()}")
    proc, result = run_gan(tmp_path, GPU_CHECK_SKIP_PROBE="1", CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert result["status"] == "failed" and re.search(r"gpu|GPU|CUDA", result["detail"]), result
    assert gpu_check_report.step_status({"rc": 1}, result) == "failed (rc 1)"


def test_the_gan_step_without_cuda_needs_cuda(tmp_path):
    proc, result = run_gan(tmp_path, CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0 and "needs CUDA: lightning_gan.py" in proc.stdout, proc.stdout + proc.stderr
    assert result["status"] == "needs CUDA" and result["part"] == "lightning-gan"
