"""A fine-tune's progress: the job panel with the live curve of every loss term between its bar
and its message."""

from ..job_status import JobState, TrainingStatus
from ..loss_plot import LossPlot
from .job_panel import JobPanel


class TrainingProgressPanel(JobPanel):
    """:class:`JobPanel` of a :class:`TrainingStatus`, plus its loss plot (cleared at each start)."""

    def __init__(self, status: TrainingStatus, background: str, foreground: str, parent=None):
        super().__init__(status, parent)
        self.loss_plot = LossPlot(self, background, foreground)
        self.body.insertWidget(2, self.loss_plot)
        self._status = status
        status.events.state.connect(self._on_state)
        status.events.last_event.connect(self._on_event)

    def _on_state(self, state: JobState):
        status = self._status
        if state == JobState.PREPARING:
            selftrain = status.pretrain if status.total > status.pretrain else None
            self.loss_plot.clear(status.total, selftrain_start=selftrain)

    def _on_event(self, event):
        if event is not None:
            self.loss_plot.add(self._status.step, event.losses)
