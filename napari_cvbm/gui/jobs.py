"""One way for both widgets to run a background job: start, progress, errors, cancel, close.

A :class:`JobRunner` starts one napari thread worker at a time, shows its progress in napari's
activity dock, turns its errors into one notification and one status line, and stops it when the
widget goes. It writes the job's :class:`~.job_status.JobStatus`; the widget's update handlers
write the rest, on the GUI thread.
"""

from functools import partial
from typing import Callable, Optional

from napari.utils import progress
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import QThreadPool
from qtpy.QtWidgets import QApplication, QWidget

from ..core.errors import CVBMInputError
from .job_status import JobState, JobStatus

CLOSE_WAIT_S = 60.0  # when the application quits, wait this long for a stopped step to end


class Connections:
    """Signal/event connections that can all be undone at once."""

    def __init__(self):
        self.connections = []

    def connect(self, emitter, callback):
        emitter.connect(callback)
        self.connections.append((emitter, callback))

    def disconnect(self, emitter):
        for pair in [p for p in self.connections if p[0] is emitter]:
            self.connections.remove(pair)
            emitter.disconnect(pair[1])

    def close(self, *_):
        for emitter, callback in self.connections:
            try:
                emitter.disconnect(callback)
            except (RuntimeError, TypeError, ValueError):
                pass
        self.connections.clear()


def failure_message(error: Exception, what: str) -> str:
    """The line a user reads: an input problem as it is, anything else as "<what> failed: ..."."""
    return str(error) if isinstance(error, CVBMInputError) else f"{what} failed: {error}"


class JobRunner:
    """Runs ``owner``'s jobs one at a time and holds its connections until ``owner`` is destroyed.

    ``what`` names the job in messages ("fine-tuning"); ``refused`` starts the status line of a
    job that failed ("Not trained").
    """

    def __init__(self, owner: QWidget, status: JobStatus, what: str, refused: str):
        self.status, self.what, self.refused = status, what, refused
        self.worker = None
        self.pbar: Optional[progress] = None
        self.lifetime = Connections()  # the owner's connections to the viewer and the model store
        self._job = Connections()  # the running worker's
        owner.destroyed.connect(partial(JobRunner.close, self))

    def idle(self) -> bool:
        """True when no job runs; otherwise warns that one does."""
        if self.status.running:
            show_warning(f"{self.what.capitalize()} is already running: wait for it to finish"
                         + (" or press Cancel." if self.status.state != JobState.STOPPING else "."))
        return not self.status.running

    def refuse(self, error: Exception) -> None:
        """A job that could not start (bad input): one notification, one status line."""
        message = failure_message(error, self.what)
        show_error(message)
        self.status.update(state=JobState.FAILED, message=f"{self.refused}: {message}")

    def start(self, worker, description: str, total: int, detail: str, message: str,
              on_update: Optional[Callable] = None, on_result: Optional[Callable] = None,
              on_finished: Optional[Callable[[], None]] = None):
        """Start ``worker`` (made with ``_start_thread=False``); ``on_finished`` runs when it ends
        without an error (done or cancelled), after its last update."""
        self.worker = worker
        self.pbar = progress(total=total, desc=description)
        # the state last: its subscribers read the new total
        self.status.update(step=0, total=total, detail=detail, message=message, state=JobState.PREPARING)
        self._job.connect(self.status.events.step, self._advance_bar)
        self._job.connect(self.status.events.total, self._resize_bar)  # e.g. once the worker has planned the run
        ended = partial(self._finished, worker, on_finished)
        for signal, slot in (("yielded", on_update), ("returned", on_result),
                             ("errored", self._failed), ("finished", ended)):
            if slot is not None:  # a function worker has no "yielded"
                self._job.connect(getattr(worker, signal), slot)
        worker.start()
        return worker

    def stop(self) -> None:
        """Ask the worker to stop at its next step (returns at once; the step ends in its own thread)."""
        if self.status.running:
            self.worker.quit()
            self.status.state = JobState.STOPPING

    def _advance_bar(self, step: int):
        if self.pbar is not None and step > self.pbar.n:
            self.pbar.update(step - self.pbar.n)

    def _resize_bar(self, total: int):
        if self.pbar is not None:
            self.pbar.total = total

    def _failed(self, error: Exception):
        message = failure_message(error, self.what)
        show_error(message)
        self.status.update(state=JobState.FAILED, detail="Stopped", message=f"{self.refused}: {message}")

    def _finished(self, worker, on_finished: Optional[Callable[[], None]]):
        self._job.close()
        self.pbar.close()
        self.pbar = None
        if self.status.state != JobState.FAILED and on_finished is not None:
            on_finished()  # it may start the next job
        if self.worker is worker and self.status.running:  # the handler did not say how it ended
            self.status.state = JobState.DONE

    def close(self, *_):
        """The owner is going: let go of the viewer and stop the job. Closing never blocks the GUI
        thread; the stopped step finishes in its own thread."""
        self.lifetime.close()
        self._job.close()
        if self.status.running:
            self.worker.quit()
            _wait_for_workers_when_quitting()


def _wait_for_workers_when_quitting():
    """Only when the whole application quits does it wait (up to CLOSE_WAIT_S) for stopped steps
    to end, so that no thread outlives the interpreter."""
    app = QApplication.instance()
    if app is not None and not app.property("cvbm_waits_for_workers"):
        app.setProperty("cvbm_waits_for_workers", True)
        app.aboutToQuit.connect(lambda: QThreadPool.globalInstance().waitForDone(int(CLOSE_WAIT_S * 1000)))
