from __future__ import annotations

import numpy as np

from .space import Space


class Box(Space):
    """A box in R^n: ``Box(low, high, shape=None, dtype=np.float32)`` (low / high arrays or scalars)."""

    def __init__(self, low, high, shape=None, dtype=np.float32) -> None:
        if shape is None:
            shape = np.shape(low) if np.ndim(low) else np.shape(high)
        super().__init__(shape, dtype)
        self.low = np.broadcast_to(np.asarray(low, dtype=dtype), self.shape).copy()
        self.high = np.broadcast_to(np.asarray(high, dtype=dtype), self.shape).copy()

    def sample(self) -> np.ndarray:
        low = np.maximum(self.low, -1e6)
        high = np.minimum(self.high, 1e6)
        return self.np_random.uniform(low, high).astype(self.dtype)

    def contains(self, x) -> bool:
        x = np.asarray(x)
        return x.shape == self.shape and bool(np.all(x >= self.low) and np.all(x <= self.high))

    def __repr__(self) -> str:
        return f"Box({self.low.min()}, {self.high.max()}, {self.shape}, {self.dtype})"
