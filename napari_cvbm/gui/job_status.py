"""The evented status of a widget's background job: the one place its state is held.

Workers never write it: they yield typed updates (``gui.workers``) and the widget applies them on
the GUI thread; panels subscribe to its events (``status.events.<field>``) and only display it.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional

from psygnal import evented

from ..core.training import ProgressEvent, TrainingRun


class JobState(str, Enum):
    IDLE = "idle"
    PREPARING = "preparing"  # the worker builds its run or reads its input
    RUNNING = "running"
    STOPPING = "stopping"  # Cancel was pressed; the step in progress ends first
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


ACTIVE = (JobState.PREPARING, JobState.RUNNING, JobState.STOPPING)


@evented
@dataclass
class JobStatus:
    """What a job is doing: its state, ``step`` of ``total``, a one-line ``detail`` of the step in
    progress and the ``message`` that tells the user what happened."""

    state: JobState = JobState.IDLE
    step: int = 0
    total: int = 0
    detail: str = "Not started"
    message: str = ""

    @property
    def running(self) -> bool:
        return self.state in ACTIVE

    def update(self, **values) -> None:
        """Set several fields (each emits its own event)."""
        for name, value in values.items():
            setattr(self, name, value)


@evented
@dataclass
class TrainingStatus(JobStatus):
    """A fine-tune's status: also its run (once the worker has built it), the steps where
    self-training starts (``pretrain``), every progress event so far (``history``, spec 5, 6) and
    the held-out check (``core.holdout``): what is held out (``held_out``) or why nothing is
    (``no_held_out``), the starting model's Dice on it and the latest one."""

    pretrain: int = 0
    run: Optional[TrainingRun] = None
    last_event: Optional[ProgressEvent] = None
    history: List[ProgressEvent] = field(default_factory=list)
    held_out: str = ""
    no_held_out: str = ""
    initial_dice: Optional[float] = None
    held_out_dice: Optional[float] = None
