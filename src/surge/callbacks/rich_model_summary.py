"""RichModelSummary: ModelSummary's table (the same rows and totals), printed with ``rich``."""
from __future__ import annotations

import importlib.util
from typing import Any

from .model_summary import ModelSummary, _human, summary_data


class RichModelSummary(ModelSummary):
    """Print the module's layers and parameter counts as a ``rich`` table at the start of fit (rank 0).

    The content is :class:`ModelSummary`'s: index, name, type and parameters of each submodule down to
    ``max_depth`` (a negative value prints nothing), then trainable, non-trainable and total parameters and
    their size in MB. ``header_style`` (a ``rich`` style, default ``"bold magenta"``) styles the header row.

    Example::

        surge.Trainer(callbacks=[RichModelSummary(max_depth=2)])
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        if importlib.util.find_spec("rich") is None:
            raise ModuleNotFoundError(
                "`RichModelSummary` requires `rich` to be installed. Install it by running `pip install -U rich`.")
        super().__init__(max_depth)
        self._summarize_kwargs = summarize_kwargs

    def on_fit_start(self, trainer, module) -> None:
        if trainer.is_global_zero and self.max_depth >= 0:
            rows, total, trainable, size_mb = summary_data(module, self.max_depth)
            self.summarize(rows, total, trainable, size_mb, **self._summarize_kwargs)

    @staticmethod
    def summarize(rows: list[tuple[str, str, int]], total_parameters: int, trainable_parameters: int,
                  model_size: float, console=None, **summarize_kwargs: Any) -> None:
        """Print ``rows`` (name, type, parameters) as a table and the totals under it, on ``console`` (default:
        rich's global console)."""
        from rich import get_console
        from rich.table import Table

        console = console or get_console()
        if rows:
            table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
            table.add_column(" ", style="dim")
            table.add_column("Name", justify="left", no_wrap=True)
            table.add_column("Type")
            table.add_column("Params", justify="right")
            for i, (name, kind, count) in enumerate(rows):
                table.add_row(str(i), name, kind, _human(count))
            console.print(table)
        grid = Table.grid(expand=True)
        grid.add_column()
        grid.add_row(f"[bold]Trainable params[/]: {_human(trainable_parameters)}")
        grid.add_row(f"[bold]Non-trainable params[/]: {_human(total_parameters - trainable_parameters)}")
        grid.add_row(f"[bold]Total params[/]: {_human(total_parameters)}")
        grid.add_row(f"[bold]Total estimated model params size (MB)[/]: {model_size:.3f}")
        console.print(grid)
