"""Lightning's own example scripts (``examples/pytorch/`` of a Lightning checkout) run unmodified on surge in
zero-edit mode: ``python -m surge.lightning <script> <small args>``, each in its own process. The table of
scripts, where they are read from (``$PL_REPO`` at ``$PL_REF``; nothing of Lightning's is copied into surge),
the offline stand-ins and the way each runs are in tests/lightning_examples/example_runs.py, shared with the
GPU check (benchmarks/lightning_gan.py). Without a Lightning checkout the tests skip, saying so.

Each test asserts exit status 0 and that training happened: the checkpoint the default ModelCheckpoint
writes, named with the step count Lightning would reach, plus the script's own outputs.
"""
from __future__ import annotations

import glob
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lightning_examples"))

from example_runs import EXAMPLES, Example, ExampleError, check, lightning_repo, read_example  # noqa: E402
from example_runs import run as run_example  # noqa: E402

TIMEOUT_S = int(os.environ.get("SURGE_EXAMPLE_TIMEOUT", "900"))


def _read_example(path: str) -> str:
    try:
        return read_example(path)
    except ExampleError as err:
        pytest.fail(str(err))


def _run(ex: Example, text: str, tmp_path, extra_args=(), also=None):
    try:
        return run_example(ex, text, tmp_path, extra_args=extra_args, also=also, timeout=TIMEOUT_S)
    except ExampleError as err:
        pytest.fail(str(err))


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_lightning_example_runs_in_zero_edit_mode(name, tmp_path):
    ex = EXAMPLES[name]
    text = _read_example(ex.path)
    if text is None:
        pytest.skip(f"no Lightning checkout at {lightning_repo()} (set PL_REPO to a Lightning git directory or checkout)")
    cuda = surge_cuda_available()
    if ex.needs_cuda and not cuda:
        # The script asks for Trainer(accelerator="gpu"), which no flag or environment default overrides;
        # without CUDA surge refuses it as Lightning does, before any training.
        done = _run(ex, text, tmp_path)
        assert done.returncode != 0, done.stdout[-4000:]
        assert re.search(r"gpu|GPU|CUDA", done.stderr), done.stderr[-4000:]
        pytest.skip(f"{ex.path} hard-codes accelerator='gpu' and this machine has no CUDA "
                    f"(checked: it stops with surge's error: {done.stderr.strip().splitlines()[-1]})")
    done = _run(ex, text, tmp_path)
    (tmp_path / "run.log").write_text(done.stdout + done.stderr, encoding="utf8")
    problems = check(ex, done, tmp_path)
    assert not problems, "\n".join(problems)


# The GAN script's own classes, trained on the CPU by a driver of ours (the script's main() asks for a GPU).
_GAN_DRIVER = """
import importlib.util
import sys

spec = importlib.util.spec_from_file_location("generative_adversarial_net", sys.argv[1])
gan = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gan)  # not as __main__: defines the classes only

from lightning.pytorch import Trainer
from lightning.pytorch.demos.mnist_datamodule import MNISTDataModule

trainer = Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2)
trainer.fit(gan.GAN(latent_dim=16), MNISTDataModule(num_workers=0))
print("global_step", trainer.global_step)
"""


def test_lightning_gan_example_classes_train_on_cpu(tmp_path):
    ex = EXAMPLES["generative_adversarial_net"]
    text = _read_example(ex.path)
    if text is None:
        pytest.skip(f"no Lightning checkout at {lightning_repo()} (set PL_REPO to a Lightning git directory or checkout)")
    (tmp_path / "gan_on_cpu.py").write_text(_GAN_DRIVER, encoding="utf8")
    driver = Example("gan_on_cpu.py", needs=ex.needs)
    done = _run(driver, _GAN_DRIVER, tmp_path, extra_args=[str(tmp_path / "examples" / "pytorch" / ex.path)],
                also=(ex.path, text))
    log = done.stdout + done.stderr
    (tmp_path / "run.log").write_text(log, encoding="utf8")
    assert done.returncode == 0, log[-6000:]
    assert "global_step 4" in done.stdout, log[-4000:]  # two optimizer steps a batch (manual optimization)
    events = glob.glob(str(tmp_path / "lightning_logs" / "version_0" / "events.out.tfevents.*"))
    assert events and max(os.path.getsize(e) for e in events) > 1000, events  # the generated images went there


def surge_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
