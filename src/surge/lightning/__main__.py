"""``python -m surge.lightning SCRIPT [ARGS ...]``: run an unmodified Lightning script on surge (zero-edit
mode, the same as ``surge run``; see surge.lightning.zero_edit)."""
import sys

from .zero_edit import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m surge.lightning"))
