"""TrainerState: every counter of a run in one place; a checkpoint stores exactly this."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class TrainerState:
    """Where a run is.

    Attributes:
        stage: "fit", "validate", "test", "predict", "sanity_check" or None between runs.
        epoch: the current (0-based) training epoch; after fit, the number of epochs completed.
        global_step: optimizer steps taken (one per optimisation step, the unit of ``max_steps``).
        batch_idx: index of the next training batch within the current epoch.
        batches_seen: training batches consumed in total (drives accumulation and ``val_check_interval``).
        should_stop: set by ``EarlyStopping`` or the user to end fit at the next safe point.
    """

    stage: str | None = None
    epoch: int = 0
    global_step: int = 0
    batch_idx: int = 0
    batches_seen: int = 0
    should_stop: bool = False

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        names = {f.name for f in fields(self)}
        for key, value in state.items():
            if key in names:
                setattr(self, key, value)
