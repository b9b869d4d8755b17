"""ModelSummary: a table of the module's layers and parameter counts, printed when fit starts."""
from __future__ import annotations

from .base import Callback


def summary_data(module, max_depth: int = 1) -> tuple[list[tuple[str, str, int]], int, int, float]:
    """What a summary shows: ``(name, type, parameters)`` of each submodule down to ``max_depth``, then the
    total and trainable parameter counts and the parameters' size in MB."""
    rows = []
    for name, sub in module.named_modules():
        depth = name.count(".") + 1 if name else 0
        if name and depth <= max_depth:
            rows.append((name, type(sub).__name__, sum(p.numel() for p in sub.parameters())))
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    size_mb = sum(p.numel() * p.element_size() for p in params) / 1e6
    return rows, total, trainable, size_mb


def summarize(module, max_depth: int = 1) -> str:
    """A text table of ``module``'s submodules down to ``max_depth``: name, type, parameters."""
    rows, total, trainable, size_mb = summary_data(module, max_depth)
    lines = []
    if rows:
        w_name = max(4, *(len(r[0]) for r in rows))
        w_type = max(4, *(len(r[1]) for r in rows))
        lines.append(f"  | {'Name':<{w_name}} | {'Type':<{w_type}} | Params")
        lines.append("-" * (w_name + w_type + 20))
        for i, (n, t, c) in enumerate(rows):
            lines.append(f"{i:<2}| {n:<{w_name}} | {t:<{w_type}} | {_human(c)}")
        lines.append("-" * (w_name + w_type + 20))
    lines.append(f"{_human(trainable):<8} Trainable params")
    lines.append(f"{_human(total - trainable):<8} Non-trainable params")
    lines.append(f"{_human(total):<8} Total params")
    lines.append(f"{size_mb:<8.3f} Total estimated model params size (MB)")
    return "\n".join(lines)


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return str(n)


class ModelSummary(Callback):
    """Print :func:`summarize` of the module at the start of fit (rank 0).

    Example::

        surge.Trainer(callbacks=[ModelSummary(max_depth=2)])
    """

    def __init__(self, max_depth: int = 1):
        self.max_depth = max_depth

    def on_fit_start(self, trainer, module) -> None:
        if trainer.is_global_zero and self.max_depth >= 0:
            print(summarize(module, self.max_depth), flush=True)
