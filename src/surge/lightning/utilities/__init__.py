"""``surge.lightning.utilities``: the helpers Lightning code imports from ``pytorch_lightning.utilities``.

Both spellings tutorials use work: ``from surge.lightning.utilities import rank_zero_only`` and
``from surge.lightning.utilities.rank_zero import rank_zero_only``; likewise
``surge.lightning.utilities.seed.seed_everything``; ``MisconfigurationException`` comes from
``surge.lightning.utilities.exceptions``, as in Lightning.
"""
from . import exceptions, rank_zero, seed
from .rank_zero import rank_zero_info, rank_zero_only, rank_zero_warn
from .seed import seed_everything

__all__ = ["exceptions", "rank_zero", "seed", "rank_zero_only", "rank_zero_info", "rank_zero_warn", "seed_everything"]
