"""Lightning's own example scripts (``examples/pytorch/`` of a Lightning checkout), run unmodified on surge in
zero-edit mode: ``python -m surge.lightning <script> <small args>``, each in its own process, in a folder of its
own. Plain Python (no pytest), so that both surge's test suite (tests/lightning_api/test_lightning_examples.py)
and the GPU check (benchmarks/lightning_gan.py, for the one script that asks for a GPU) use the same table and
the same way of running.

The scripts are read from a Lightning repository at run time (nothing of Lightning's is copied into surge):
``$PL_REPO`` (a checkout with ``examples/pytorch``, or a git directory read at ``$PL_REF``, default the tag
``2.6.5``). ``benchmarks/lightning_checkout.sh`` copies the examples out of a git directory into ``.lightning/``
of this repository (ignored by git), where the GPU check looks when ``PL_REPO`` is unset.

Where a script needs torchvision or gym and the interpreter has none, surge's offline stand-ins (``offline/``
beside this file) go on ``PYTHONPATH``; WikiText-2 for ``transformer.py`` is a generated corpus put where
Lightning's ``WikiText2`` looks before downloading (``./data/wikitext-2.txt``). The runs are made tiny with each
script's own flags (LightningCLI's ``--trainer.*``, argparse options) and, where the script builds its Trainer
itself, with Lightning's ``PL_TRAINER_*`` environment defaults.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.machinery
import os
import random
import re
import subprocess
import sys
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SRC = os.path.join(ROOT, "src")
OFFLINE = os.path.join(HERE, "offline")
STANDINS = {"torchvision": os.path.join(OFFLINE, "torchvision_standin"), "gym": os.path.join(OFFLINE, "gym_standin")}
MIRROR = "/work/.mirror/Lightning-AI+pytorch-lightning/repo"  # where this project's sessions keep a clone
CHECKOUT = os.path.join(ROOT, ".lightning")                    # what benchmarks/lightning_checkout.sh writes

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


class ExampleError(RuntimeError):
    """The Lightning repository given has no such script, or a run went wrong in a way a test reports."""


def lightning_repo() -> str:
    """Where the scripts come from: ``$PL_REPO``, else ``.lightning/`` when it holds the examples, else the mirror."""
    if os.environ.get("PL_REPO"):
        return os.environ["PL_REPO"]
    if os.path.isdir(os.path.join(CHECKOUT, "examples", "pytorch")):
        return CHECKOUT
    return MIRROR


def read_example(path: str, repo: str | None = None, ref: str | None = None) -> str | None:
    """The script's text from the Lightning checkout or git directory, or None when there is neither."""
    repo = repo or lightning_repo()
    ref = ref or os.environ.get("PL_REF", "2.6.5")
    in_tree = os.path.join(repo, "examples", "pytorch", path)
    if os.path.isfile(in_tree):
        with open(in_tree, encoding="utf8") as f:
            return f.read()
    git_dir = repo if os.path.isdir(os.path.join(repo, "objects")) else os.path.join(repo, ".git")
    if not os.path.isdir(git_dir):
        return None
    done = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"{ref}:examples/pytorch/{path}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ExampleError(f"{repo} has no examples/pytorch/{path} at {ref}: {done.stderr.strip()}")
    return done.stdout


def has_real(package: str) -> bool:
    """Whether this interpreter (the one the examples run in) has the real package, stand-ins aside."""
    path = [p for p in sys.path if not p.startswith(OFFLINE)]
    return importlib.machinery.PathFinder.find_spec(package, path) is not None


def write_wikitext(folder: str, tokens: int = 150_000, vocab: int = 400, seed: int = 0) -> None:
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


def run(ex: Example, text: str, folder, extra_args=(), also=None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Write ``text`` to ``folder/examples/pytorch/<ex.path>`` (Lightning's layout: some scripts find data by
    it; ``also``: one more (path, text)) and run it there in zero-edit mode. Raises :class:`ExampleError`
    when it runs past ``timeout`` seconds."""
    folder = Path(folder)
    script = folder / "examples" / "pytorch" / ex.path
    for path, body in [(ex.path, text)] + ([also] if also else []):
        target = folder / "examples" / "pytorch" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body, encoding="utf8")
    if ex.path == "basics/transformer.py":
        write_wikitext(str(folder))
    paths = [SRC] + [STANDINS[p] for p in ex.needs if not has_real(p)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PL_", "SURGE_"))}
    env.update(ex.env)
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", "1")  # a shared 2-core machine: two threads each spin-wait and run 3x slower
    try:
        return subprocess.run([sys.executable, "-m", "surge.lightning", str(script), *ex.args, *extra_args],
                              cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        raise ExampleError(f"{ex.path} ran past {timeout} s:\n{out[-4000:]}") from None


def check(ex: Example, done: subprocess.CompletedProcess, folder) -> list:
    """What is wrong with a finished run (an empty list: nothing): exit status 0, the default ModelCheckpoint's
    ``epoch=E-step=S.ckpt`` with the step Lightning reaches, the script's own files and output."""
    folder = Path(folder)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        return [f"{ex.path} exited {done.returncode}:\n{log[-6000:]}"]
    ckpts = glob.glob(str(folder / "lightning_logs" / "version_0" / "checkpoints" / "epoch=*-step=*.ckpt"))
    if not ckpts:
        return [f"no checkpoint written:\n{log[-4000:]}"]
    problems = []
    steps = {int(re.search(r"step=(\d+)", os.path.basename(c)).group(1)) for c in ckpts}
    if steps != {ex.steps}:
        problems.append(f"checkpoints at steps {sorted(steps)}, expected {ex.steps}")
    problems += [f"{f} not written" for f in ex.files if not (folder / f).is_file()]
    problems += [f"{pattern!r} not in the output" for pattern in ex.output if not re.search(pattern, log)]
    if problems:
        problems.append(log[-4000:])
    return problems
