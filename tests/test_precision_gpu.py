"""Precisions and speed defaults on a CUDA GPU. Skipped without CUDA (but the list of checks is checked everywhere).

The checks themselves live in tests/gpu_checks.py as plain functions, so that a GPU machine without
pytest runs the same ones (``python tests/gpu_checks.py``, which benchmarks/gpu_check.sh calls).
Written in sessions without a GPU: not run on one yet (see docs/benchmarks.md, "GPU").
"""
import pytest
import torch

import gpu_checks


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(gpu_checks.CHECKS))
def test_gpu_check(name):
    try:
        gpu_checks.CHECKS[name]()
    except gpu_checks.Skip as err:
        pytest.skip(str(err))


def test_every_check_is_collected():
    """A check_* function added to gpu_checks.py joins CHECKS (and so this file) by its name alone."""
    defined = {n[len("check_"):] for n in vars(gpu_checks) if n.startswith("check_")} - {"precision"}
    assert defined <= set(gpu_checks.CHECKS)
    assert {f"precision_{p}" for p in gpu_checks.PRECISIONS} <= set(gpu_checks.CHECKS)


def test_the_names_read_from_the_source_are_the_checks():
    """Without CUDA the runner lists the checks from gpu_checks.py's source, before importing torch: the list
    must be CHECKS, in its order, or a report on a CPU would name checks that do not exist."""
    assert gpu_checks.list_check_names() == list(gpu_checks.CHECKS)
