"""Splitting a model into consecutive stages, and the one-process split across devices.

A model is split along its *body*: an ``nn.Sequential`` (the module itself or one of its attributes),
or an ``nn.ModuleList`` named ``blocks``, ``layers`` or ``h`` whose owner also holds the modules that
run before it (embeddings) and after it (final norm, head). :func:`plan_split` finds the body and
chooses where each stage starts; :class:`StageModule` runs one stage; :func:`keep_only` removes the
other stages' modules from the user's module in place, so that ``module.parameters()`` and
``module.state_dict()`` hold this stage's parameters under their original names ("blocks.3.attn.weight").

:class:`ModelParallel` is the simplest use: one process, stage ``k`` on ``devices[k]``, activations
moved from device to device by forward hooks, so the user's ``forward`` and ``training_step`` run
unchanged (the hand-made split of a model over two GPUs, without the ``.to()`` calls).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from ..utils import MisconfigurationError
from .strategy import Strategy, register

BODY_NAMES = ("blocks", "layers", "h")


@dataclasses.dataclass
class Body:
    """Where a model's sequence of blocks sits: ``owner.<attr>`` is the body, ``path`` its full name."""

    owner: nn.Module
    attr: Optional[str]          # None: the owner itself is the nn.Sequential body
    path: str                    # "" or "model.blocks": prefix of the block names
    keys: list                   # the body's child names, in order ("0", "1", ... or a Sequential's own names)
    blocks: list                 # the body's child modules, in order
    pre: list                    # (name, module) of the owner's children before the body (ModuleList bodies only)
    post: list                   # (name, module) after it

    def name(self, i: int) -> str:
        return f"{self.path}.{self.keys[i]}" if self.path else self.keys[i]


def find_body(module: nn.Module) -> Body:
    """The body of ``module``: itself if it is an ``nn.Sequential``, else the first attribute (searched
    two levels deep) that is an ``nn.Sequential`` or an ``nn.ModuleList`` named blocks/layers/h."""
    for path, owner in module.named_modules():
        if path.count(".") > 1:
            continue
        if isinstance(owner, nn.Sequential) and path == "":
            return _body(owner, None, "")
        for attr, child in owner.named_children():
            if isinstance(child, nn.Sequential) or (isinstance(child, nn.ModuleList) and attr in BODY_NAMES):
                return _body(owner, attr, f"{path}.{attr}" if path else attr)
    raise MisconfigurationError(
        f"cannot find the blocks of {type(module).__name__} to split into pipeline stages: make the model (or "
        f"an attribute of it) an nn.Sequential, or keep its blocks in an nn.ModuleList named {' / '.join(BODY_NAMES)} "
        f"with the embedding registered before it and the head after it"
    )


def _body(owner: nn.Module, attr: Optional[str], path: str) -> Body:
    container = owner if attr is None else getattr(owner, attr)
    items = [(k, m) for k, m in container._modules.items() if m is not None]
    pre, post, seen = [], [], False
    if isinstance(container, nn.ModuleList):  # a Sequential is the whole model: its neighbours are not part of it
        for name, child in owner.named_children():
            if name == attr:
                seen = True
            elif child is not None:
                (post if seen else pre).append((name, child))
    return Body(owner, attr, path, [k for k, _ in items], [m for _, m in items], pre, post)


def _count(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def plan_split(body: Body, num_stages: int, split_points: Optional[list] = None) -> list[tuple[int, int]]:
    """``num_stages`` ranges ``(start, end)`` of block indices: at ``split_points`` (block names where a
    stage starts, e.g. ``["blocks.6"]``) or balanced by parameter count (embedding counted with the
    first block, head with the last)."""
    n = len(body.blocks)
    if num_stages > n:
        raise MisconfigurationError(f"cannot split {n} blocks ({body.path or 'the Sequential'}) into {num_stages} "
                                    f"pipeline stages: use at most {n} stages (stages x virtual_stages)")
    if split_points is not None:
        names = {body.name(i): i for i in range(n)}
        starts = []
        for point in split_points:
            if point not in names:
                raise MisconfigurationError(f"split point {point!r} names no block; the blocks are "
                                            f"{', '.join(list(names)[:8])}{', ...' if n > 8 else ''}")
            starts.append(names[point])
        if len(starts) != num_stages - 1:
            raise MisconfigurationError(f"{len(starts)} split points make {len(starts) + 1} stages, but the pipeline "
                                        f"has {num_stages} (stages x virtual_stages)")
        if starts != sorted(set(starts)) or (starts and starts[0] == 0):
            raise MisconfigurationError(f"split points {split_points} must name distinct blocks in order, after the first")
        bounds = [0, *starts, n]
        return [(bounds[k], bounds[k + 1]) for k in range(num_stages)]
    cost = [_count([b]) for b in body.blocks]
    cost[0] += _count(m for _, m in body.pre)
    cost[-1] += _count(m for _, m in body.post)
    return _balance([max(c, 1) for c in cost], num_stages)


def _balance(cost: list[int], k: int) -> list[tuple[int, int]]:
    """Contiguous ranges of ``cost`` into ``k`` parts minimising the largest part (dynamic programming)."""
    n = len(cost)
    prefix = [0]
    for c in cost:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for parts in range(1, k + 1):
        for end in range(parts, n + 1):
            for start in range(parts - 1, end):
                worst = max(best[parts - 1][start], prefix[end] - prefix[start])
                if worst < best[parts][end]:
                    best[parts][end], cut[parts][end] = worst, start
    ranges, end = [], n
    for parts in range(k, 0, -1):
        start = cut[parts][end]
        ranges.append((start, end))
        end = start
    return ranges[::-1]


class StageModule(nn.Module):
    """One stage: the owner's pre-modules (first stage), blocks ``[start, end)``, post-modules (last stage).

    The embedding and the head run through the owner's ``pipeline_embed(x)`` / ``pipeline_head(h)`` when
    it defines them (a GPT adds a position embedding), else the pre/post modules are applied in order.
    """

    def __init__(self, body: Body, start: int, end: int, first: bool, last: bool) -> None:
        super().__init__()
        self._owner = [body.owner]  # a list: not registered, so parameters() holds this stage's only
        self.first, self.last = first, last
        self.pre = nn.ModuleList([m for _, m in body.pre] if first else [])
        self.body = nn.ModuleList(body.blocks[start:end])
        self.post = nn.ModuleList([m for _, m in body.post] if last else [])

    def forward(self, x):
        owner = self._owner[0]
        if self.first:
            if hasattr(owner, "pipeline_embed"):
                x = owner.pipeline_embed(x)
            else:
                for m in self.pre:
                    x = m(x)
        for block in self.body:
            x = block(x)
        if self.last:
            if hasattr(owner, "pipeline_head"):
                x = owner.pipeline_head(x)
            else:
                for m in self.post:
                    x = m(x)
        return x


def keep_only(body: Body, ranges: list[tuple[int, int]], local: list[int]) -> None:
    """Drop from the user's module every block, pre- and post-module that no stage in ``local`` runs."""
    kept = {i for k in local for i in range(*ranges[k])}
    container = body.owner if body.attr is None else getattr(body.owner, body.attr)
    for i, key in enumerate(body.keys):
        if i not in kept:
            container._modules[key] = None  # the other blocks keep their names ("blocks.7"): nothing shifts
    last = len(ranges) - 1
    for names, keep in ((body.pre, 0 in local), (body.post, last in local)):
        if not keep:
            for name, _ in names:
                body.owner._modules[name] = None


@register("model_parallel")
class ModelParallel(Strategy):
    """One process; consecutive stages of the model on ``devices`` (e.g. two GPUs), in order.

    Example::

        trainer = surge.Trainer(strategy=ModelParallel(devices=["cuda:0", "cuda:1"]))

    The model is split as the pipeline splits it (balanced by parameter count, or at ``split_points``);
    forward hooks move each stage's input to its device and the output back to the first device, so
    ``forward`` and ``training_step`` need no ``.to()`` calls.
    """

    name = "model_parallel"

    def __init__(self, devices: Optional[list] = None, split_points: Optional[list] = None) -> None:
        super().__init__()
        if devices is None:
            count = torch.cuda.device_count()
            devices = [f"cuda:{i}" for i in range(count)] if count > 1 else ["cpu", "cpu"]
        if not isinstance(devices, (list, tuple)) or not devices:
            raise MisconfigurationError(f"ModelParallel(devices=...) must be a list of devices, got {devices!r}")
        self.devices = [torch.device(d) for d in devices]
        self.split_points = split_points
        self._hooks: list = []

    def _pick_root_device(self) -> torch.device:
        return self.devices[0]

    def setup_module(self, module: nn.Module) -> None:
        module = self.precision.convert_module(module)
        module.to(self.devices[0])  # what is not in the body (and the first stage) lives on the first device
        body = find_body(module)
        ranges = plan_split(body, len(self.devices), self.split_points)
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for k, ((start, end), device) in enumerate(zip(ranges, self.devices)):
            modules = body.blocks[start:end] + ([m for _, m in body.post] if k == len(ranges) - 1 else [])
            for m in modules:
                m.to(device)
            self._hooks.append(body.blocks[start].register_forward_pre_hook(_to_device_hook(device)))
        if body.post:
            self._hooks.append(body.post[0][1].register_forward_pre_hook(_to_device_hook(self.devices[-1])))
        # The output comes back to the first device, where the targets are.
        last = body.post[-1][1] if body.post else body.blocks[-1]
        self._hooks.append(last.register_forward_hook(lambda mod, args, out: _move(out, self.devices[0])))
        self.module = self.model = module


def _move(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_move(o, device) for o in obj)
    return obj


def _to_device_hook(device):
    def hook(mod, args):
        return _move(args, device)

    return hook
