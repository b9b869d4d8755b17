"""How much `import surge` (and `from surge import Trainer, Module`) adds to `import torch`.

Each measurement runs in a fresh interpreter, interleaved, several times; the medians are compared.
When Lightning is installed, `import lightning` is measured the same way for comparison.
Usage: python benchmarks/import_time.py [--repeats 7]
"""
import argparse
import importlib.util
import statistics
import subprocess
import sys

SNIPPETS = {
    "torch": "import torch",
    "surge": "import torch, surge",
    "surge API": "import torch, surge; surge.Trainer, surge.Module, surge.DataModule, surge.ModelCheckpoint",
}
if importlib.util.find_spec("lightning") is not None:
    SNIPPETS["lightning"] = "import torch, lightning"
TIMER = "import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"


def measure(code: str) -> float:
    out = subprocess.run([sys.executable, "-X", "frozen_modules=on", "-c", TIMER.format(code=code)],
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    measure("import torch")  # warm the file cache
    times = {name: [] for name in SNIPPETS}
    for _ in range(args.repeats):
        for name, code in SNIPPETS.items():
            times[name].append(measure(code))
    base = statistics.median(times["torch"])
    print(f"{'what':<12} {'median s':>9} {'over torch s':>13}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<12} {med:9.3f} {med - base:13.3f}")
    heavy = subprocess.run([sys.executable, "-c", "import sys, surge; surge.Trainer; "
                            "print(sorted(m for m in ('torch._dynamo', 'tensorboard', 'torch.utils.tensorboard', "
                            "'tqdm', 'yaml', 'sklearn') if m in sys.modules))"], capture_output=True, text=True).stdout
    print(f"heavy modules loaded by the API: {heavy.strip()}")


if __name__ == "__main__":
    main()
