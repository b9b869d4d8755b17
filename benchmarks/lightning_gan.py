"""Lightning's GAN example (``examples/pytorch/domain_templates/generative_adversarial_net.py``), unmodified, on
surge in zero-edit mode on a GPU: its ``main()`` builds ``Trainer(accelerator="gpu", devices=1)``, so it is the
one Lightning example that cannot run on a CPU machine (Lightning refuses it there too).

The script is read from a Lightning checkout (``$PL_REPO``, else ``.lightning/`` as written by
``bash benchmarks/lightning_checkout.sh <git dir>``; nothing of Lightning's is kept in surge's history) and run
the way surge's test suite runs the other examples (tests/lightning_examples/example_runs.py): one epoch of two
batches (``PL_TRAINER_MAX_EPOCHS=1``, ``PL_TRAINER_LIMIT_TRAIN_BATCHES=2``), torchvision's MNIST from surge's
offline stand-in where torchvision is missing. It passes when the script exits 0 and the default
ModelCheckpoint wrote ``epoch=0-step=4.ckpt`` (manual optimisation, two optimizers: two steps a batch).

``--json PATH`` writes the result for benchmarks/gpu_check.sh: status "ok", "failed", "needs CUDA" (no GPU
here: answered without importing torch) or "no Lightning checkout" (nothing to run; not a failure).
Usage: python benchmarks/lightning_gan.py [--json PATH] [--timeout 120]
"""
import argparse
import os
import sys
import tempfile
import time

from cuda_probe import exit_if_no_cuda, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "generative_adversarial_net"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--json", help="write the result to this file (for benchmarks/gpu_check.sh)")
    p.add_argument("--timeout", type=float, default=120, help="seconds the script may run")
    a = p.parse_args()
    result = {"part": "lightning-gan", "example": NAME}
    exit_if_no_cuda("lightning_gan.py", a.json, result, "(Lightning's GAN example asks for accelerator='gpu')")
    sys.path.insert(0, os.path.join(ROOT, "tests", "lightning_examples"))
    import example_runs

    ex = example_runs.EXAMPLES[NAME]
    repo = example_runs.lightning_repo()
    text = example_runs.read_example(ex.path, repo)
    if text is None:
        why = f"no Lightning checkout at {repo}: run `bash benchmarks/lightning_checkout.sh <Lightning git dir>`"
        write_json(a.json, dict(result, status="no Lightning checkout", detail=why))
        print(f"no Lightning checkout: {why}")
        return 0
    folder = tempfile.mkdtemp(prefix="lightning_gan.")
    t0, log = time.perf_counter(), ""
    try:
        done = example_runs.run(ex, text, folder, timeout=a.timeout)
        log, problems = done.stdout + done.stderr, example_runs.check(ex, done, folder)
    except example_runs.ExampleError as err:  # it ran past the timeout
        problems = [str(err)]
    seconds = time.perf_counter() - t0
    with open(os.path.join(folder, "run.log"), "w") as f:
        f.write(log)
    status = "failed" if problems else "ok"
    write_json(a.json, dict(result, status=status, seconds=round(seconds, 1), folder=folder, repo=repo,
                            detail=problems[0][:2000] if problems else f"step {ex.steps} reached, checkpoint written"))
    print(f"{ex.path}: {status} in {seconds:.1f} s (its run under {folder})")
    if problems:
        print("\n".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
