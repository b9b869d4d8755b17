"""Lightning's own example scripts (``examples/pytorch/`` of a Lightning checkout) run unmodified on surge in
zero-edit mode: ``python -m surge.lightning <script> <small args>``, each in its own process.

The scripts are read from a Lightning git repository at test time (nothing of Lightning's is copied into
surge): ``$PL_REPO`` (a git directory, or a checkout with ``examples/pytorch``), by default the mirror at
``/work/.mirror/Lightning-AI+pytorch-lightning/repo``, at ``$PL_REF`` (default the tag ``2.6.5``). Without
one the tests skip, saying so.

Where a script needs torchvision or gym and the interpreter has none, surge's offline stand-ins
(tests/lightning_examples/offline/) go on ``PYTHONPATH``; WikiText-2 for ``transformer.py`` is a generated
corpus put where Lightning's ``WikiText2`` looks before downloading (``./data/wikitext-2.txt``). The runs are
made tiny with each script's own flags (LightningCLI's ``--trainer.*``, argparse options) and, where the
script builds its Trainer itself, with Lightning's ``PL_TRAINER_*`` environment defaults.

Each test asserts exit status 0 and that training happened: the checkpoint the default ModelCheckpoint
writes, named with the step count Lightning would reach, plus the script's own outputs.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.machinery
import importlib.util
import os
import random
import re
import subprocess
import sys

import pytest

import surge

SRC = os.path.dirname(os.path.dirname(os.path.abspath(surge.__file__)))
OFFLINE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lightning_examples", "offline")
STANDINS = {"torchvision": os.path.join(OFFLINE, "torchvision_standin"), "gym": os.path.join(OFFLINE, "gym_standin")}
DEFAULT_REPO = "/work/.mirror/Lightning-AI+pytorch-lightning/repo"
PL_REPO = os.environ.get("PL_REPO", DEFAULT_REPO)
PL_REF = os.environ.get("PL_REF", "2.6.5")
TIMEOUT_S = int(os.environ.get("SURGE_EXAMPLE_TIMEOUT", "900"))

CLI_TINY = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
            "--trainer.limit_test_batches=2", "--trainer.limit_predict_batches=2"]


@dataclasses.dataclass
class Example:
    path: str                     # under examples/pytorch/
    args: list = dataclasses.field(default_factory=list)
    env: dict = dataclasses.field(default_factory=dict)
    needs: tuple = ()             # packages the script imports that may need an offline stand-in
    steps: int = 0                # the global step Lightning ends at (in the default checkpoint's name)
    files: tuple = ()             # more files the run must leave in its folder
    output: tuple = ()            # regular expressions its output must match
    needs_cuda: bool = False      # the script hard-codes Trainer(accelerator="gpu")


EXAMPLES = {
    "autoencoder": Example(
        "basics/autoencoder.py", CLI_TINY, needs=("torchvision",), steps=2,
        files=("grid_ori_0.png", "grid_generated_0.png"), output=(r"test_loss", r"tensor\(\[\[")),
    "backbone_image_classifier": Example(
        "basics/backbone_image_classifier.py", CLI_TINY, needs=("torchvision",), steps=2,
        output=(r"test_loss", r"tensor\(\[\[")),
    # trainer = L.Trainer(gradient_clip_val=0.25, max_epochs=20): 20 epochs of 2 batches.
    "transformer": Example(
        "basics/transformer.py", env={"PL_TRAINER_LIMIT_TRAIN_BATCHES": "2", "PL_TRAINER_LIMIT_VAL_BATCHES": "2",
                                      "PL_TRAINER_LIMIT_TEST_BATCHES": "2"},
        steps=40, output=(r"test_loss",)),
    "bug_report_model": Example("bug_report/bug_report_model.py", steps=1, output=(r"test_loss",)),
    "generative_adversarial_net": Example(
        "domain_templates/generative_adversarial_net.py", ["--latent_dim", "16"],
        env={"PL_TRAINER_MAX_EPOCHS": "1", "PL_TRAINER_LIMIT_TRAIN_BATCHES": "2"},
        needs=("torchvision",), steps=4, needs_cuda=True),  # manual optimization, two optimizers: 2 per batch
    "reinforce_learn_Qnet": Example(
        "domain_templates/reinforce_learn_Qnet.py",
        ["--replay_size", "64", "--warm_start_steps", "64", "--episode_length", "32", "--batch_size", "8"],
        env={"PL_TRAINER_MAX_EPOCHS": "1", "PL_TRAINER_LIMIT_TRAIN_BATCHES": "3"}, needs=("gym",), steps=3),
    # 2 epochs of 128 environment steps in batches of 32; manual optimization, two optimizers: 2 per batch.
    "reinforce_learn_ppo": Example(
        "domain_templates/reinforce_learn_ppo.py", ["--steps_per_epoch", "128", "--batch_size", "32"],
        env={"PL_TRAINER_MAX_EPOCHS": "2"}, needs=("gym",), steps=16),
}


def _read_example(path: str) -> str:
    """The script's text from the Lightning checkout or git directory, or None when there is none."""
    in_tree = os.path.join(PL_REPO, "examples", "pytorch", path)
    if os.path.isfile(in_tree):
        with open(in_tree, encoding="utf8") as f:
            return f.read()
    git_dir = PL_REPO if os.path.isdir(os.path.join(PL_REPO, "objects")) else os.path.join(PL_REPO, ".git")
    if not os.path.isdir(git_dir):
        return None
    done = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{PL_REF}:examples/pytorch/{path}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"{PL_REPO} has no examples/pytorch/{path} at {PL_REF}: {done.stderr.strip()}")
    return done.stdout


def _has_real(package: str) -> bool:
    """Whether the interpreter the examples run in (this one) has the real package (stand-ins aside)."""
    path = [p for p in sys.path if not p.startswith(OFFLINE)]
    return importlib.machinery.PathFinder.find_spec(package, path) is not None


def _write_wikitext(folder: str, tokens: int = 150_000, vocab: int = 400, seed: int = 0) -> None:
    """A generated stand-in for WikiText-2's training text (what Lightning's ``WikiText2`` downloads to
    ``data/wikitext-2.txt``): lines of words from a small vocabulary, drawn from a fixed word-to-word
    transition table so there is something to learn. ``transformer.py`` splits off 4000 blocks of 35
    tokens for validation and test, so the corpus needs more than 140000 tokens."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    follow = {w: rng.sample(words, 5) for w in words}
    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    with open(os.path.join(folder, "data", "wikitext-2.txt"), "w", encoding="utf8") as f:
        written, word = 0, words[0]
        while written < tokens:
            line = []
            for _ in range(rng.randint(8, 30)):
                word = rng.choice(follow[word])
                line.append(word)
            f.write(" " + " ".join(line) + " \n")
            written += len(line) + 1  # + <eos>


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_lightning_example_runs_in_zero_edit_mode(name, tmp_path):
    ex = EXAMPLES[name]
    text = _read_example(ex.path)
    if text is None:
        pytest.skip(f"no Lightning checkout at {PL_REPO} (set PL_REPO to a Lightning git directory or checkout)")
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
    log = done.stdout + done.stderr
    (tmp_path / "run.log").write_text(log, encoding="utf8")
    assert done.returncode == 0, f"{ex.path} exited {done.returncode}:\n{log[-6000:]}"
    ckpts = glob.glob(str(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "epoch=*-step=*.ckpt"))
    assert ckpts, f"no checkpoint written:\n{log[-4000:]}"
    steps = {int(re.search(r"step=(\d+)", os.path.basename(c)).group(1)) for c in ckpts}
    assert steps == {ex.steps}, (steps, log[-4000:])
    for f in ex.files:
        assert (tmp_path / f).is_file(), f"{f} not written:\n{log[-4000:]}"
    for pattern in ex.output:
        assert re.search(pattern, log), f"{pattern!r} not in the output:\n{log[-4000:]}"


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
        pytest.skip(f"no Lightning checkout at {PL_REPO} (set PL_REPO to a Lightning git directory or checkout)")
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


def _run(ex: Example, text: str, tmp_path, extra_args=(), also=None) -> subprocess.CompletedProcess:
    script = tmp_path / "examples" / "pytorch" / ex.path  # Lightning's layout: some scripts find data by it
    for path, body in [(ex.path, text)] + ([also] if also else []):
        target = tmp_path / "examples" / "pytorch" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body, encoding="utf8")
    if ex.path == "basics/transformer.py":
        _write_wikitext(str(tmp_path))
    paths = [SRC] + [STANDINS[p] for p in ex.needs if not _has_real(p)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PL_", "SURGE_"))}
    env.update(ex.env)
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", "1")  # a shared 2-core machine: two threads each spin-wait and run 3x slower
    try:
        return subprocess.run([sys.executable, "-m", "surge.lightning", str(script), *ex.args, *extra_args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        pytest.fail(f"{ex.path} ran past {TIMEOUT_S} s:\n{out[-4000:]}")
