"""``surge.lightning.utilities.rank_zero``: run, print or warn on global rank 0 only (surge's own helpers);
``LightningDeprecationWarning`` is :class:`surge.warnings.SurgeDeprecationWarning`."""
from ...utils import rank_zero_info, rank_zero_only, rank_zero_warn
from ...warnings import SurgeDeprecationWarning as LightningDeprecationWarning
from ...warnings import rank_zero_debug, rank_zero_deprecation

__all__ = ["rank_zero_only", "rank_zero_info", "rank_zero_warn", "rank_zero_debug", "rank_zero_deprecation",
           "LightningDeprecationWarning"]
