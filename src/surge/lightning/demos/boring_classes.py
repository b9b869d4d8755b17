"""``lightning.pytorch.demos.boring_classes``: :mod:`surge.demos.boring` under Lightning's module path."""
from ...demos.boring import *  # noqa: F401,F403
from ...demos.boring import __all__  # noqa: F401
