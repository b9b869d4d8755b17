"""``surge.lightning.utilities``: the helpers Lightning code imports from ``pytorch_lightning.utilities``.

Both spellings tutorials use work: ``from surge.lightning.utilities import rank_zero_only`` and
``from surge.lightning.utilities.rank_zero import rank_zero_only``; likewise
``surge.lightning.utilities.seed.seed_everything``; ``MisconfigurationException`` comes from
``surge.lightning.utilities.exceptions``, as in Lightning. ``CombinedLoader`` loads when first named.
"""
from . import enums, exceptions, parsing, rank_zero, seed, types, warnings
from ...data import move_to_device as move_data_to_device
from .enums import LightningEnum
from .parsing import AttributeDict
from .rank_zero import rank_zero_deprecation, rank_zero_info, rank_zero_only, rank_zero_warn
from .seed import seed_everything
from .warnings import disable_possible_user_warnings

__all__ = ["AttributeDict", "CombinedLoader", "LightningEnum", "disable_possible_user_warnings", "move_data_to_device",
           "rank_zero_deprecation", "rank_zero_info", "rank_zero_only", "rank_zero_warn", "seed_everything",
           "enums", "exceptions", "parsing", "rank_zero", "seed", "types", "warnings"]


def __getattr__(name: str):
    if name == "CombinedLoader":
        from .combined_loader import CombinedLoader

        globals()[name] = CombinedLoader
        return CombinedLoader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
