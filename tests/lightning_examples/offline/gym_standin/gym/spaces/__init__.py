"""``gym.spaces`` for the offline stand-in (see the package docstring): ``Box`` and ``Discrete``."""
from .box import Box
from .discrete import Discrete
from .space import Space

__all__ = ["Space", "Box", "Discrete"]
