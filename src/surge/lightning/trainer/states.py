"""``surge.lightning.trainer.states``: ``TrainerFn``, ``RunningStage``, ``TrainerStatus`` (:mod:`surge.states`)
and ``TrainerState`` (:class:`surge.state.TrainerState`, what ``trainer.state`` is)."""
from ...state import TrainerState
from ...states import RunningStage, TrainerFn, TrainerStatus

__all__ = ["TrainerFn", "RunningStage", "TrainerStatus", "TrainerState"]
