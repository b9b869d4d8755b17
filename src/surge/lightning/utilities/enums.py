"""``surge.lightning.utilities.enums``: ``LightningEnum`` is :class:`surge.states.StrEnum`, the base of
``TrainerFn`` and ``RunningStage``."""
from ...states import StrEnum as LightningEnum

__all__ = ["LightningEnum"]
