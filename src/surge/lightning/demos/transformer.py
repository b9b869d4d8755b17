"""``lightning.pytorch.demos.transformer``: :mod:`surge.demos.transformer` under Lightning's module path."""
from ...demos.transformer import *  # noqa: F401,F403
from ...demos.transformer import __all__  # noqa: F401
