"""A fine-tune's progress: the job panel with the live curve of every loss term (and of the
held-out Dice) between its bar and its message."""

from ..job_status import JobState, TrainingStatus
from ..loss_plot import LossPlot
from .job_panel import JobPanel


class TrainingProgressPanel(JobPanel):
    """:class:`JobPanel` of a :class:`TrainingStatus`, plus its loss plot (cleared at each start and
    when the run's length becomes known)."""

    def __init__(self, status: TrainingStatus, background: str, foreground: str, parent=None):
        super().__init__(status, parent)
        self.loss_plot = LossPlot(self, background, foreground)
        self.body.insertWidget(2, self.loss_plot)
        self._status = status
        status.events.state.connect(self._clear)
        status.events.total.connect(self._clear)  # the run was planned after it started
        status.events.last_event.connect(self._on_event)
        status.events.initial_dice.connect(self._on_initial_dice)

    def _clear(self, *_):
        """Span the plot over the run's steps while it prepares."""
        status = self._status
        if status.state == JobState.PREPARING:
            selftrain = status.pretrain if status.total > status.pretrain else None
            self.loss_plot.clear(status.total, selftrain_start=selftrain)

    def _on_initial_dice(self, dice):
        if dice is not None:  # the starting model, before the first step
            self.loss_plot.add_dice(0, dice)

    def _on_event(self, event):
        if event is not None:
            self.loss_plot.add(self._status.step, event.losses)
            if event.validation_dice is not None:
                self.loss_plot.add_dice(self._status.step, event.validation_dice)
