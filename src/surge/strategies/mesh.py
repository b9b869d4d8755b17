"""Device meshes and extra process groups, made once per process and shared by its Trainers.

A mesh of two or more dimensions creates a process group for each dimension, and a gloo group for
background checkpoints is one more: each is a rendezvous over the store and, on GPUs, an NCCL
communicator that holds device memory. torch frees them only with the default group, so a process that
builds Trainer after Trainer (a sweep, ``fit`` and then ``test`` with a new Trainer) would pile them up.
Here a layout is built the first time it is asked for and handed out again after that, as long as
the default group it was built on is the one in use.
"""
from __future__ import annotations

from typing import Any, Callable

import torch.distributed as dist

_made: dict = {}  # key -> what was made, on the default group below
_world: Any = None  # the default group those were made on


def once_per_group(key: tuple, make: Callable[[], Any]) -> Any:
    """``make()`` the first time ``key`` is asked for on the current default process group; the same
    object after that. Every rank must ask for the same keys in the same order (``make`` is collective)."""
    global _world
    world = dist.group.WORLD
    if world is not _world:  # destroyed and made again since: what was kept belongs to the old group
        _made.clear()
        _world = world
    if key not in _made:
        _made[key] = make()
    return _made[key]


def device_mesh(device_type: str, shape: tuple, names: tuple):
    """``init_device_mesh(device_type, shape, mesh_dim_names=names)``, built once per process and group."""
    from torch.distributed.device_mesh import init_device_mesh

    shape, names = tuple(shape), tuple(names)
    return once_per_group(("mesh", device_type, shape, names),
                          lambda: init_device_mesh(device_type, shape, mesh_dim_names=names))
