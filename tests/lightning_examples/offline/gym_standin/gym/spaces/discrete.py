from __future__ import annotations

import numpy as np

from .space import Space


class Discrete(Space):
    """The integers 0 .. n-1."""

    def __init__(self, n: int) -> None:
        super().__init__((), np.int64)
        self.n = int(n)

    def sample(self) -> int:
        return int(self.np_random.integers(self.n))

    def contains(self, x) -> bool:
        try:
            value = int(x)
        except (TypeError, ValueError):
            return False
        return value == x and 0 <= value < self.n

    def __repr__(self) -> str:
        return f"Discrete({self.n})"
