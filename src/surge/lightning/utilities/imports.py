"""``surge.lightning.utilities.imports``: facts about this Python environment that Lightning code checks
(``if _TORCHVISION_AVAILABLE:``, ``@pytest.mark.skipif(not _RICH_AVAILABLE, ...)``).

Each flag is a ``bool``, worked out on first access from package metadata (``importlib``), without
importing the package: ``from surge.lightning.utilities.imports import _OMEGACONF_AVAILABLE`` stays cheap.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys

# flag -> (distribution, lowest version or None, first version above the range or None)
_REQUIREMENTS = {
    "_TORCHVISION_AVAILABLE": ("torchvision", None, None),
    "_OMEGACONF_AVAILABLE": ("omegaconf", None, None),
    "_RICH_AVAILABLE": ("rich", "10.2.2", None),
    "_TORCHMETRICS_GREATER_EQUAL_0_8_0": ("torchmetrics", "0.8.0", None),
    "_TORCHMETRICS_GREATER_EQUAL_0_9_1": ("torchmetrics", "0.9.1", None),
    "_TORCHMETRICS_GREATER_EQUAL_0_11": ("torchmetrics", "0.11.0", None),
    "_TORCHMETRICS_GREATER_EQUAL_1_0_0": ("torchmetrics", "1.0.0", None),
    "_TORCH_GREATER_EQUAL_2_6": ("torch", "2.6.0", None),
    "_TORCH_GREATER_EQUAL_2_8": ("torch", "2.8.0", None),
    "_TORCH_EQUAL_2_8": ("torch", "2.8.0", "2.9.0"),
    "_TORCH_EQUAL_2_9": ("torch", "2.9.0", "2.10.0"),
}
_PYTHON_GREATER_EQUAL_3_11_0 = sys.version_info >= (3, 11)

__all__ = sorted(_REQUIREMENTS) + ["_PYTHON_GREATER_EQUAL_3_11_0"]


def _release(version: str) -> tuple[int, ...]:
    """(2, 13, 0) for "2.13.0+cpu" or "2.13.0rc1": the release numbers, which is what the flags compare."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0].split("rc")[0])[:3])


def _holds(distribution: str, low, high) -> bool:
    if importlib.util.find_spec(distribution) is None:
        return False
    if low is None and high is None:
        return True
    try:
        installed = _release(importlib.metadata.version(distribution))
    except importlib.metadata.PackageNotFoundError:  # importable, but not installed as a distribution
        return False
    return (low is None or installed >= _release(low)) and (high is None or installed < _release(high))


def __getattr__(name: str):
    if name in _REQUIREMENTS:
        value = _holds(*_REQUIREMENTS[name])
        globals()[name] = value  # worked out once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
