"""Cart-pole for the offline gym stand-in (see the package docstring).

A pole hinged on a cart that moves along a track; each step pushes the cart left (action 0) or right
(action 1) with a fixed force and earns reward 1.0. The episode is over when the pole leans more than
12 degrees, the cart leaves the track (|x| > 2.4), or the step limit is reached. The state is
(cart position, cart velocity, pole angle, pole angular velocity), integrated with explicit Euler steps
of 0.02 s from the usual frictionless cart-pole equations.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .core import Env
from .spaces import Box, Discrete

GRAVITY = 9.8
CART_MASS = 1.0
POLE_MASS = 0.1
POLE_HALF_LENGTH = 0.5
PUSH = 10.0
DT = 0.02
ANGLE_LIMIT = 12 * 2 * math.pi / 360
TRACK_LIMIT = 2.4


class CartPoleEnv(Env):
    def __init__(self, max_episode_steps: int = 500, seed: Optional[int] = None) -> None:
        super().__init__()
        bound = np.array([TRACK_LIMIT * 2, np.finfo(np.float32).max, ANGLE_LIMIT * 2, np.finfo(np.float32).max],
                         dtype=np.float32)
        self.observation_space = Box(-bound, bound, dtype=np.float32)
        self.action_space = Discrete(2)
        self.max_episode_steps = max_episode_steps
        self.state = None
        self.steps = 0
        self.seed(seed)

    def reset(self) -> np.ndarray:
        self.state = self.np_random.uniform(-0.05, 0.05, size=4)
        self.steps = 0
        return self.state.astype(np.float32)

    def step(self, action):
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        a = int(action)
        if a not in (0, 1):
            raise ValueError(f"CartPole's actions are 0 and 1, not {action!r}")
        x, x_dot, theta, theta_dot = self.state
        force = PUSH if a == 1 else -PUSH
        total_mass = CART_MASS + POLE_MASS
        cos, sin = math.cos(theta), math.sin(theta)
        # Angular acceleration of the pole, then the cart's acceleration given it.
        temp = (force + POLE_MASS * POLE_HALF_LENGTH * theta_dot ** 2 * sin) / total_mass
        theta_acc = (GRAVITY * sin - cos * temp) / (
            POLE_HALF_LENGTH * (4.0 / 3.0 - POLE_MASS * cos ** 2 / total_mass))
        x_acc = temp - POLE_MASS * POLE_HALF_LENGTH * theta_acc * cos / total_mass
        x, x_dot = x + DT * x_dot, x_dot + DT * x_acc
        theta, theta_dot = theta + DT * theta_dot, theta_dot + DT * theta_acc
        self.state = np.array([x, x_dot, theta, theta_dot])
        self.steps += 1
        fallen = abs(x) > TRACK_LIMIT or abs(theta) > ANGLE_LIMIT
        done = bool(fallen or self.steps >= self.max_episode_steps)
        info = {"TimeLimit.truncated": not fallen and done}
        return self.state.astype(np.float32), 1.0, done, info
