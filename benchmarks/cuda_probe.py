"""Is there a CUDA device here? Answered in milliseconds, without importing torch (which takes seconds).

The GPU scripts of benchmarks/gpu_check.sh call ``exit_if_no_cuda`` before their heavy imports, so that on
a machine without CUDA each of them starts, writes its "needs CUDA" result and exits 0 at once.

The probe asks the CUDA driver itself (``libcuda.so.1`` through ctypes: ``cuInit``, then
``cuDeviceGetCount``), which honours ``CUDA_VISIBLE_DEVICES`` as torch does. No driver library, a failing
``cuInit`` or no device: no CUDA. When the probe finds a device the script still asks torch (a CPU build of
torch on a GPU machine has no CUDA either). If torch sees a device that the probe does not, setting
``GPU_CHECK_SKIP_PROBE=1`` leaves the answer to torch alone: gpu_check.sh sets it whenever torch sees CUDA
(``python benchmarks/cuda_probe.py`` asks it once), so on a GPU machine the probe can never stop a step.

Usage: python benchmarks/cuda_probe.py [--json PATH]   (the probe, torch's answer, and the packages found)
Standard library only.
"""
import ctypes
import importlib.util
import json
import os
import sys

SKIP_PROBE = "GPU_CHECK_SKIP_PROBE"
DRIVER_LIBRARIES = ("libcuda.so.1", "libcuda.so")
PACKAGES = ("torch", "numpy", "yaml", "tqdm", "tensorboard", "psutil", "pynvml", "lightning", "pytorch_lightning")


def driver_device_count() -> int:
    """How many CUDA devices the driver shows this process; 0 without a driver library or when cuInit fails."""
    for name in DRIVER_LIBRARIES:
        try:
            driver = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        return 0
    try:
        if driver.cuInit(0) != 0:  # CUDA_SUCCESS is 0; CUDA_VISIBLE_DEVICES="" gives CUDA_ERROR_NO_DEVICE
            return 0
        count = ctypes.c_int(0)
        if driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except AttributeError:  # a library of that name without the driver API
        return 0
    return count.value


def probe_says_no_cuda() -> bool:
    """True when the driver shows no device (and GPU_CHECK_SKIP_PROBE is not set)."""
    return os.environ.get(SKIP_PROBE, "") in ("", "0") and driver_device_count() == 0


def write_json(path, result: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)


def exit_if_no_cuda(script: str, json_path, result: dict, why: str) -> None:
    """Without a CUDA device: write ``result`` with status "needs CUDA" to json_path (when given), print
    "needs CUDA: <script> <why>" and exit 0. With one: return (the caller then imports torch)."""
    if not probe_says_no_cuda():
        return
    write_json(json_path, dict(result, status="needs CUDA", device="no CUDA device", probe="no CUDA driver device"))
    print(f"needs CUDA: {script} {why}; the CUDA driver shows no device here", flush=True)
    sys.exit(0)


def environment() -> dict:
    """The probe's answer, torch's (this imports torch), and which of gpu_check.sh's packages are installed."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found[name] = False
    env = {"part": "env", "python": sys.version.split()[0], "driver_devices": driver_device_count(),
           "packages": found, "torch": None, "torch_cuda": False, "device": "no CUDA device"}
    if found["torch"]:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.cuda.is_available()
        if env["torch_cuda"]:
            env["device"] = torch.cuda.get_device_name(0)
    env["status"] = "ok" if env["torch_cuda"] else "needs CUDA"
    env["probe_agrees"] = (env["driver_devices"] > 0) == env["torch_cuda"]
    return env


def main() -> int:
    path = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    env = environment()
    write_json(path, env)
    missing = [n for n, ok in env["packages"].items() if not ok]
    print(f"python {env['python']}, torch {env['torch']}, torch.cuda.is_available() {env['torch_cuda']}, "
          f"driver devices {env['driver_devices']}, device: {env['device']}")
    print(f"not installed: {', '.join(missing) or 'none'}")
    if not env["probe_agrees"]:
        print(f"the driver probe ({env['driver_devices']} devices) and torch disagree; torch decides "
              f"(gpu_check.sh sets {SKIP_PROBE}=1 whenever torch sees CUDA)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
