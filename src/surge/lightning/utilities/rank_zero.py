"""``surge.lightning.utilities.rank_zero``: run or print on global rank 0 only (surge's own helpers)."""
from ...utils import rank_zero_info, rank_zero_only, rank_zero_warn

__all__ = ["rank_zero_only", "rank_zero_info", "rank_zero_warn"]
