"""``python -m surge ...`` is the ``surge`` command."""
import sys

from .cli import main

sys.exit(main())
