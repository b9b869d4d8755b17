"""OFFLINE STAND-IN for OpenAI gym, part of surge's tests (not gym, and not shipped with surge).

tests/lightning_api/test_lightning_examples.py puts the folder above this one on ``PYTHONPATH`` only when
the interpreter that runs Lightning's reinforcement-learning examples has no real ``gym``. It follows the
gym API those examples were written for (before gym 0.26): ``env.reset()`` returns the observation and
``env.step(action)`` returns ``(observation, reward, done, info)``. The one environment is the classic
cart-pole balancing task (``CartPole-v0``: episodes end after 200 steps, ``CartPole-v1``: after 500),
written from its textbook equations of motion.
"""
from . import spaces
from .core import Env
from .envs import CartPoleEnv

__version__ = "0.0+surge.offline.standin"
__all__ = ["Env", "make", "spaces", "CartPoleEnv"]

_REGISTRY = {"CartPole-v0": 200, "CartPole-v1": 500}


def make(id: str, **kwargs) -> Env:
    if id not in _REGISTRY:
        raise ValueError(f"the offline gym stand-in has no environment {id!r}, only {sorted(_REGISTRY)}")
    return CartPoleEnv(max_episode_steps=_REGISTRY[id], **kwargs)
