"""The ``surge`` command.

``surge demo [options]`` trains the digits demo (see ``surge demo --help``).
"""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\ncommands:\n  demo    train a CNN on scikit-learn's handwritten digits and report test accuracy")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from .demos.digits import main as demo_main

        demo_main(rest)
        return 0
    print(f"surge: unknown command {command!r}; run `surge --help`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
