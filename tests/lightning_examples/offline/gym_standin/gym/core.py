"""``gym.Env`` for the offline stand-in (see the package docstring)."""
from __future__ import annotations

from typing import Optional

import numpy as np


class Env:
    action_space = None
    observation_space = None

    def __init__(self) -> None:
        self.np_random = np.random.default_rng()

    def seed(self, seed: Optional[int] = None) -> list:
        self.np_random = np.random.default_rng(seed)
        if self.action_space is not None:
            self.action_space.seed(None if seed is None else seed + 1)
        return [seed]

    def reset(self):
        raise NotImplementedError

    def step(self, action):
        raise NotImplementedError

    def render(self, mode: str = "human"):
        return None

    def close(self) -> None:
        pass

    @property
    def unwrapped(self) -> "Env":
        return self
