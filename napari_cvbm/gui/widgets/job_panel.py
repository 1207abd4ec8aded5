"""The progress of a job as the user sees it: a line on the step in progress, a bar, a message."""

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget

from ..job_status import JobStatus


class JobPanel(QWidget):
    """Shows ``status``: ``detail`` (hidden when empty) above a bar of ``step``/``total``, then ``message``."""

    def __init__(self, status: JobStatus, parent=None):
        super().__init__(parent)
        self.detail = QLabel(status.detail)
        self.detail.setVisible(bool(status.detail))
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setRange(0, max(status.total, 1))
        self.message = QLabel(status.message, wordWrap=True)
        self.message.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.body = layout  # a subclass inserts its own views between the bar and the message
        for widget in (self.detail, self.progress, self.message):
            layout.addWidget(widget)
        events = status.events
        events.detail.connect(self._show_detail)
        events.message.connect(lambda text: self.message.setText(text))
        events.total.connect(lambda total: self.progress.setRange(0, max(total, 1)))
        events.step.connect(lambda step: self.progress.setValue(step))

    def _show_detail(self, text: str):
        self.detail.setText(text)
        self.detail.setVisible(bool(text))
