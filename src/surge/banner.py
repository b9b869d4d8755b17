"""surge's banner, printed by scripts that greet their user (``cli_lightning_logo`` under ``surge.lightning``)."""
from __future__ import annotations

import sys

__all__ = ["LOGO", "print_logo"]

LOGO = r"""
     ___ _  _ _ _ __ _  ___
    (_-<| || | '_/ _` |/ -_)
    /__/ \_,_|_| \__, |\___|
                 |___/
"""


def print_logo(file=None) -> None:
    """Print :data:`LOGO` between blank lines, in colour when ``file`` (default stdout) is a terminal."""
    file = sys.stdout if file is None else file
    text = LOGO.strip("\n")
    if getattr(file, "isatty", lambda: False)():
        text = f"\033[0;36m{text}\033[0m"
    print(f"\n{text}\n", file=file)
