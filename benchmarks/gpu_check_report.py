"""The summary table of benchmarks/gpu_check.sh: reads OUT/steps.tsv and OUT/json/*.json, prints the
table (markdown) and writes it to OUT/gpu_check.md. Needs only the standard library.

A cell says why it has no number: "needs CUDA", "Lightning not installed", "OOM", "timeout" (the step
or the run ran past its limit), "no time" (the script's budget was spent before the step), "error".

The exit status is 0 when every step is "ok" or "needs CUDA", 1 otherwise (a failed, timed-out or unstarted
step, or no steps at all).

Usage: python benchmarks/gpu_check_report.py OUT
"""
import csv
import json
import os
import sys

MLP_RUNS = ["plain loop", "surge fit", "surge cuda_graphs", "lightning fit"]
GPT_RUNS = ["plain", "surge", "lightning"]


def read_steps(out: str) -> dict:
    steps = {}
    path = os.path.join(out, "steps.tsv")
    if os.path.exists(path):
        with open(path) as f:
            for row in csv.DictReader(f, delimiter="\t"):
                steps[row["step"]] = {k: int(v) for k, v in row.items() if k != "step"}
    return steps


def read_json(out: str, name: str):
    try:
        with open(os.path.join(out, "json", name + ".json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def step_status(step, result) -> str:
    """One phrase for how a step ended: ok, needs CUDA, timeout, no time, failed (rc N), error (rc N, no
    result), not run. Only a step that exited 0 and wrote its result is "ok" (or "needs CUDA")."""
    if step is None:
        return "not run"
    rc = step["rc"]
    if rc == -1:
        return "no time"
    if rc in (124, 137):
        return "timeout"
    if result is None:
        return f"error (rc {rc}, no result)"
    if rc != 0:
        return f"failed (rc {rc})"
    return result.get("status") if result.get("status") in SKIPS else "ok"


# What a step that exited 0 may say instead of "ok": it had nothing to run here. Not a failure.
SKIPS = ("needs CUDA", "no Lightning checkout")


def passed(status: str) -> bool:
    """Whether a step's status leaves the run clean (the script's exit status is 1 otherwise)."""
    return status == "ok" or status in SKIPS


def counts(statuses) -> str:
    """"3 ok, 2 needs CUDA, 1 failed (rc 1)": how many of each, in the order first seen."""
    seen = {}
    for s in statuses:
        seen[s] = seen.get(s, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in seen.items()) or "none"


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(header, rows) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def checks_section(steps, out) -> list:
    result = read_json(out, "tests")
    status = step_status(steps.get("tests"), result)
    rows, seen = [], set()
    for c in (result or {}).get("checks", []):
        seen.add(c["name"])
        rows.append([c["name"], c["status"], fmt(c.get("seconds"), ".1f"), c.get("detail", "").replace("|", "/")])
    for name in (result or {}).get("planned", []):
        if name not in seen:  # the process ended (timeout) before this check
            rows.append([name, status if status != "ok" else "not reached", "-", ""])
    if not rows:
        rows.append(["(all checks)", status, "-", "see logs/tests.log"])
    title = f"## Checks (tests/gpu_checks.py): {counts(r[1] for r in rows)}; step {status}"
    return [title, ""] + table(["check", "result", "s", "detail"], rows)


def mlp_section(steps, out) -> list:
    result = read_json(out, "mlp")
    status = step_status(steps.get("mlp"), result)
    by_run = {r["run"]: r for r in (result or {}).get("rows", [])}
    rows = []
    for run in MLP_RUNS:
        r = by_run.get(run)
        if r is None or r["status"] != "ok":
            why = r["status"] if r is not None else status
            rows.append([run, why, why, why])
        else:
            rows.append([run, fmt(r["us_per_step"], ".1f"), fmt(r["ratio"], ".3f"), fmt(r["peak_mem_mib"], ".0f")])
    cfg = (result or {}).get("config") or {}
    what = f"batch {cfg.get('batch')}, {cfg.get('steps')} steps x {cfg.get('pairs')} rounds" if cfg else status
    return [f"## Tiny MLP per step (benchmarks/cuda_graph.py): {what}", ""] + table(
        ["run", "us/step", "ratio to plain", "peak MiB"], rows)


def gpt_cell(row, status):
    if row is None:
        return [status] * 3
    if row["status"] != "ok":
        return [row["status"]] * 3
    mfu = fmt(row["mfu"] * 100, ".1f") + "%" if row.get("mfu") is not None else "n/a"
    return [fmt(row["tokens_per_s"], ",.0f"), mfu, fmt(row.get("peak_mem_gib"), ".1f")]


def gpt_section(steps, out) -> list:
    eager = read_json(out, "gpt-eager")
    eager_status = step_status(steps.get("gpt-eager"), eager)
    eager_rows = {r["run"]: r for r in (eager or {}).get("rows", []) if not r.get("compiled")}
    rows, config = [], (eager or {}).get("config")
    for run in GPT_RUNS:
        compiled = read_json(out, f"gpt-compiled-{run}")
        config = config or (compiled or {}).get("config")
        compiled_status = step_status(steps.get(f"gpt-compiled-{run}"), compiled)
        compiled_row = next((r for r in (compiled or {}).get("rows", []) if r["run"] == run and r.get("compiled")),
                            None)
        rows.append([run] + gpt_cell(eager_rows.get(run), eager_status) + gpt_cell(compiled_row, compiled_status))
    what = (f"batch {config['batch']} x T {config['block_size']}, {config['steps']} timed steps after "
            f"{config['warmup']}" if config else eager_status)
    return [f"## GPT-2-small bf16 (benchmarks/gpt_mfu.py): {what}", ""] + table(
        ["run", "eager tokens/s", "eager MFU", "eager peak GiB", "compiled tokens/s", "compiled MFU",
         "compiled peak GiB"], rows)


def gan_section(steps, out) -> list:
    result = read_json(out, "lightning-gan")
    status = step_status(steps.get("lightning-gan"), result)
    detail = (result or {}).get("detail") or "see logs/lightning-gan.log"
    seconds = (result or {}).get("seconds")
    return [f"## Lightning's GAN example, unmodified, zero-edit mode (benchmarks/lightning_gan.py): {status}", "",
            detail.splitlines()[0] + (f" ({seconds} s)" if seconds is not None else "")]


def steps_section(steps, out) -> list:
    rows = []
    for name, s in steps.items():
        rows.append([name, step_status(s, read_json(out, name)), s["seconds"], s["limit"], f"logs/{name}.log"])
    total = sum(s["seconds"] for s in steps.values())
    return [f"## Steps: {len(rows)} in {total} s: {counts(r[1] for r in rows)}", ""] + table(
        ["step", "status", "s", "limit s", "log"], rows)


def header(out) -> list:
    env = read_json(out, "env") or {}
    device, torch = env.get("device"), env.get("torch")
    lightning = None
    for name in ("tests", "mlp", "gpt-eager", "gpt-compiled-plain", "gpt-compiled-lightning"):
        r = read_json(out, name) or {}
        device = device if device not in (None, "no CUDA device") else r.get("device", device)
        torch, lightning = torch or r.get("torch"), lightning or r.get("lightning")
    missing = [n for n, ok in (env.get("packages") or {}).items() if not ok]
    lines = ["# surge GPU check (benchmarks/gpu_check.sh)", "",
             f"device: {device or '?'}; torch {torch or '?'}; Lightning: {lightning or 'not installed or not run'}"]
    if env:
        lines.append(f"not installed: {', '.join(missing) or 'none'}")
    if env and not env.get("probe_agrees", True):
        lines.append(f"note: the CUDA driver probe saw {env.get('driver_devices')} devices, torch "
                     f"{'some' if env.get('torch_cuda') else 'none'}; the steps asked torch")
    return lines


def main() -> int:
    out = sys.argv[1]
    steps = read_steps(out)
    statuses = [step_status(s, read_json(out, name)) for name, s in steps.items()]
    lines = header(out)
    lines += ["", f"steps: {counts(statuses)}" + ("" if all(map(passed, statuses)) else " (not all passed)")]
    for section in (checks_section, gan_section, mlp_section, gpt_section, steps_section):
        lines += [""] + section(steps, out)
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "gpu_check.md"), "w") as f:
        f.write(text)
    print(text, end="")
    return 0 if statuses and all(map(passed, statuses)) else 1

if __name__ == "__main__":
    sys.exit(main())
