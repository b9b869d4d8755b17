"""``surge.lightning.utilities.warnings``: ``PossibleUserWarning`` is :class:`surge.warnings.PossibleUserWarning`."""
from ...warnings import PossibleUserWarning, disable_possible_user_warnings

__all__ = ["PossibleUserWarning", "disable_possible_user_warnings"]
