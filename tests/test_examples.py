"""Every script under examples/ runs (a few batches, SURGE_EXAMPLE_FAST=1) and prints what it should.

The examples are the seed tutorials' code with the import changed (examples/README.md); each runs
in its own process from an empty folder, the way a user runs it.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest
import torch

import surge.strategies

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

# script -> (needs the ddp strategy, lines its output must match)
EXPECTED = {
    "seed000_mnist_ddp.py": (True, [r"^data: ", r"world size 2, trained 4 steps, train_loss \d"]),
    "seed001_ddp_linear.py": (True, [r"weight checksum on each of 2 ranks: .*identical: True",
                                     r"final train_loss \d.* after 6 steps"]),
    "seed002_multi_gpu.py": (True, [r"^DDP: 2 processes on \w+, precision 32-true, train_loss \d",
                                    r"^DDP \+ mixed precision: 2 processes on \w+, precision 16-mixed"]),
    "seed003_linear_regression.py": (False, [r"^linear regression: test_loss \d.*logs in logs",
                                             r"^MyModel: trained 4 steps over 2 epochs"]),
    "seed003_mnist_datamodule.py": (False, [r"^data: ", r"^MNISTDataModule: test_acc \d",
                                            r"^MyDataModule: val_acc \d"]),
    "seed004_model_parallel.py": (False, [r"^data: ", r"^part1 on \S+, part2 on \S+",
                                          r"^Test Loss: \d.*, Accuracy: \d"]),
}


def test_every_example_is_checked():
    scripts = sorted(os.path.basename(p) for p in glob.glob(os.path.join(EXAMPLES, "*.py")))
    assert scripts == sorted(EXPECTED), "add the new example to EXPECTED in tests/test_examples.py"


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script, tmp_path):
    needs_ddp, patterns = EXPECTED[script]
    if needs_ddp and "ddp" not in surge.strategies.strategy_names():
        pytest.skip("the 'ddp' strategy is not registered in surge.strategies yet")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SURGE_", "MASTER_", "RANK", "LOCAL_RANK",
                                                                    "WORLD_SIZE", "NODE_RANK"))}
    env["SURGE_EXAMPLE_FAST"] = "1"
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"{script} exited with {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    for pattern in patterns:
        assert re.search(pattern, run.stdout, re.MULTILINE), f"{script}: no line matches {pattern!r}\n{run.stdout[-3000:]}"
    # the data line is printed once even when several processes run the script
    assert len(re.findall(r"^data: ", run.stdout, re.MULTILINE)) <= 1


# ---------------------------------------------------------------- the MNIST stand-in and the torchvision path
def test_offline_mnist_has_mnists_shape():
    from surge.demos.mnist import mnist_files_exist, offline_mnist

    train, test = offline_mnist(train=True), offline_mnist(train=False, mean=0.0, std=1.0)
    x, y = train.tensors
    assert x.shape[1:] == (1, 28, 28) and x.dtype.is_floating_point and y.dtype == torch.long
    assert len(train) > len(test) > 0 and set(y.tolist()) == set(range(10))
    assert 0.0 <= float(test.tensors[0].min()) and float(test.tensors[0].max()) <= 1.0
    assert not mnist_files_exist(os.path.join(EXAMPLES, "no-such-folder"))


_FAKE_TORCHVISION = {
    "__init__.py": "from . import datasets, transforms\n",
    "transforms.py": (
        "import torch\n"
        "class Compose:\n"
        "    def __init__(self, fns): self.fns = fns\n"
        "    def __call__(self, x):\n"
        "        for fn in self.fns: x = fn(x)\n"
        "        return x\n"
        "class ToTensor:\n"
        "    def __call__(self, img): return img.float().div(255).unsqueeze(0)\n"
        "class Normalize:\n"
        "    def __init__(self, mean, std): self.mean, self.std = mean[0], std[0]\n"
        "    def __call__(self, x): return (x - self.mean) / self.std\n"
    ),
    "datasets.py": (
        "import os, torch\n"
        "class MNIST(torch.utils.data.Dataset):\n"
        "    def __init__(self, root, train=True, download=False, transform=None):\n"
        "        assert os.path.isdir(os.path.join(root, 'MNIST', 'raw')), 'the example should not need a download'\n"
        "        self.n, self.transform = (60000 if train else 10000), transform\n"
        "    def __len__(self): return self.n\n"
        "    def __getitem__(self, i):\n"
        "        img = (torch.rand(28, 28, generator=torch.Generator().manual_seed(i)) * 255).to(torch.uint8)\n"
        "        return (self.transform(img) if self.transform else img), i % 10\n"
    ),
}


def test_example_takes_torchvisions_mnist_when_it_and_the_files_are_there(tmp_path):
    """A stand-in torchvision with torchvision's MNIST API, and the MNIST file names under ./data:
    the example runs the tutorial's own torchvision code (55,000/5,000 split and all)."""
    from surge.demos.mnist import MNIST_FILES

    package = tmp_path / "fake" / "torchvision"
    package.mkdir(parents=True)
    for name, text in _FAKE_TORCHVISION.items():
        (package / name).write_text(text)
    raw = tmp_path / "run" / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / name).write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SURGE_")}
    env.update(SURGE_EXAMPLE_FAST="1", PYTHONPATH=str(tmp_path / "fake"))
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, "seed003_mnist_datamodule.py")],
                         cwd=tmp_path / "run", env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "data: MNIST from ./data (torchvision)" in run.stdout
    assert "MNISTDataModule: test_acc" in run.stdout and "MyDataModule: val_acc" in run.stdout
