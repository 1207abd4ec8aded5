"""The "Fine-tune with unlabeled data" widget: CVBM semi-supervised training from the viewer.

It is made of panels (``gui.widgets``): the training data, the settings, the progress with its
loss plot, and the shared model panel. The job's one source of truth is a
:class:`~.job_status.TrainingStatus`; the worker (``gui.workers.training_updates``) yields typed
updates that this widget applies to it on the GUI thread. Cancel stops the run at the next step and
keeps the active model.

With the planned entry the run is planned from the data (``core.planning``, as ``cvbm train``
does). From layers, a worker plans it shortly after the data or the settings change (a newer request
supersedes an older one) and the settings panel shows the plan; Start trains with that plan, or
plans again in its worker when the plan shown is not the one for the data and settings at that
moment. Folders are read when fine-tuning starts, in the worker, which then plans the run and shows
the plan (kept while the folders and settings stay as they were).

Layers and folders are prepared by the same ``workers.prepare_run``: part of the user's labels is
held out (``core.holdout``, spec 6); the run validates on it about ten times, keeps its best model
and is judged by it. A finished run's model joins ``MODEL_STORE`` as the active model unless its
held-out Dice is below the starting model's (``core.holdout.got_worse``).
"""

import itertools
from functools import partial
from typing import Optional, Tuple, Union

from napari.qt.threading import create_worker
from napari.utils.notifications import show_info
from napari.utils.theme import get_theme
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from ..core.config import TrainConfig
from ..core.errors import CVBMInputError
from ..core.holdout import got_worse
from ..core.planning import Plan
from ..core.training import PHASE_NAMES, ProgressEvent, TrainingRun
from . import models
from .job_status import JobState, TrainingStatus
from .jobs import Connections, JobRunner, failure_message
from .widgets.channel_picker import model_channels
from .widgets.model_panel import ModelPanel
from .widgets.training_data import TrainingDataPanel
from .widgets.training_progress import TrainingProgressPanel
from .widgets.training_settings import TrainingSettingsPanel
from .workers import (
    DataRead,
    FolderRun,
    Folders,
    PlanInputs,
    Planned,
    Prepared,
    RunReady,
    RunSettings,
    planned,
    prepare_run,
    training_updates,
)

PLAN_DELAY_MS = 400  # plan once the data and settings have not changed for this long
FOLDERS_PLANNED_AT_START = "Plan: made when fine-tuning starts (the folders are read then)."


def describe_event(event: ProgressEvent) -> str:
    return f"{PHASE_NAMES[event.phase].capitalize()} {event.iteration}/{event.total}"


def run_message(model: str, data: str, checked: str, total: Optional[int], first: str = "planning the run") -> str:
    """What the status says a starting run does (``total`` None: it is ``first`` doing something)."""
    steps = f" for {total} steps" if total is not None else f" ({first} first)"
    return f"{model}{steps} on {data}{checked}…"


def model_words(active: Optional[str], dim: int, config: Optional[TrainConfig]) -> str:
    """The model a run trains: the active one, named ``active``, or a new network (of ``config``, if known)."""
    if active is not None:
        return f"Fine-tuning '{active}'"
    return f"Training a new {dim}D network" + (f" (width {config.width})" if config is not None else "")


def before_after(before: float, after: float) -> str:
    return f"before {before:.2f}, after {after:.2f}"


class FineTuneWidget(QWidget):
    """Fine-tune the active model (or train a new one) with CVBM on labeled + unlabeled data."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.status = TrainingStatus()
        self.runner = JobRunner(self, self.status, what="fine-tuning", refused="Not trained")
        self.data = TrainingDataPanel(napari_viewer, self.runner.lifetime)
        self.settings = TrainingSettingsPanel()
        self.start_button = QPushButton("Fine-tune with unlabeled data")
        self.cancel_button = QPushButton("Cancel", enabled=False)
        self.start_button.clicked.connect(lambda: self.start())
        self.cancel_button.clicked.connect(lambda: self.cancel())
        theme = get_theme(napari_viewer.theme)
        self.progress = TrainingProgressPanel(self.status, theme.background.as_hex(), theme.text.as_hex())
        self.model_panel = ModelPanel(self.status, picker=False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button, 1)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.data)
        layout.addWidget(self.settings)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.model_panel)
        layout.addStretch(1)
        self.status.events.state.connect(self._show_state)
        self.runner.lifetime.connect(models.MODEL_STORE.changed, self.settings.on_model_changed)
        # the plan shown: (its data, None for the layers, or the Folders; the settings it was made with; the plan)
        self._plan: Optional[Tuple[Optional[Folders], tuple, Plan]] = None
        self._run_plan_key: Tuple[Optional[Folders], Optional[tuple]] = (None, None)  # the started run's
        self._start_trained = False  # whether the started run fine-tunes a trained model (ModelStore.is_trained)
        self._plan_request = 0  # the latest request; results of earlier ones are dropped
        self._planning = Connections()  # to the planning worker in flight
        self.destroyed.connect(self._planning.close)
        self._plan_timer = QTimer(self, singleShot=True, interval=PLAN_DELAY_MS)
        self._plan_timer.timeout.connect(self.plan)
        for changed in (self.data.changed, self.settings.changed):
            changed.connect(self._plan_timer.start)
        self.settings.changed.connect(self._follow_channels)
        self._follow_channels()
        self._plan_timer.start()

    def reset_choices(self, *_):
        """napari calls this when layers change: the layer pickers follow."""
        self.data.reset_choices()

    def _follow_channels(self):
        """The images are read as the model fine-tuned takes them (a new network: grey or RGB layers)."""
        self.data.set_channels(model_channels(self.settings.active_config() if self.settings.from_active else None))

    @property
    def running(self) -> bool:
        return self.status.running

    @property
    def run(self) -> Optional[TrainingRun]:
        return self.status.run

    def _show_state(self, state: JobState):
        self.start_button.setEnabled(not self.status.running)
        self.cancel_button.setEnabled(state in (JobState.PREPARING, JobState.RUNNING))
        if not self.status.running:  # plans asked for while it ran were skipped
            self._plan_timer.start()

    # -- the plan -------------------------------------------------------------------------------------
    def plan(self):
        """Plan the run from the current layers and settings in a worker and show it (the planned entry,
        when no fine-tune runs); a newer request supersedes this one. Returns the worker, if any."""
        self._plan_request += 1
        self._planning.close()
        if not self.settings.planned or self.status.running:
            return None
        line = self.settings.plan_line
        try:
            if self.data.from_folders:  # planned when they are read: the plan made for them, if still valid
                key = (self.data.typed_folders(), self._plan_settings())
                if self._plan is not None and self._plan[:2] == key:
                    self.settings.show_plan(self._plan[2])
                else:
                    line.setText(FOLDERS_PLANNED_AT_START)
                return None
            inputs = PlanInputs(*self.data.plan_snapshot(), *self._plan_settings())
        except CVBMInputError as exc:
            line.setText(f"Plan: {exc}")
            return None
        line.setText("Planning…")
        worker = create_worker(planned, *inputs, _start_thread=False, _ignore_errors=True)
        request = self._plan_request
        self._planning.connect(worker.returned, partial(self._planned, request, inputs.settings()))
        self._planning.connect(worker.errored, partial(self._plan_failed, request))
        worker.start()
        return worker

    def _plan_settings(self) -> tuple:
        """What a plan depends on besides the data (``PlanInputs.settings``); bad settings raise CVBMInputError."""
        settings = self.settings
        return settings.device(), settings.budget_s(), settings.overrides()

    def _planned(self, request: int, settings: tuple, plan: Plan):
        if request == self._plan_request:
            self._plan = (None, settings, plan)
            self.settings.show_plan(plan)

    def _plan_failed(self, request: int, error: Exception):
        if request == self._plan_request:
            self.settings.plan_line.setText(f"Plan: {failure_message(error, 'planning')}")

    # -- starting and stopping ----------------------------------------------------------------------
    def start(self):
        """Snapshot the inputs and start fine-tuning in a worker; returns the worker (None if refused).
        A run on layers is prepared here, one on folders in the worker once it has read them."""
        if not self.runner.idle():
            return None
        try:
            prepared = self._prepare()
        except CVBMInputError as exc:
            self.runner.refuse(exc)
            return None
        self._plan_request += 1  # a plan in flight now comes too late
        self.status.update(pretrain=0, run=None, last_event=None, history=[], held_out="", no_held_out="",
                           initial_dice=None, held_out_dice=None)
        self._model = partial(model_words, models.MODEL_STORE.active if self.settings.from_active else None,
                              self.settings.dim())
        if isinstance(prepared, Prepared):
            total, message = self._show_prepared(prepared)
        else:
            total, message = None, run_message(self._model(None), f"the images in {prepared.folders.images}", "",
                                               None, "reading the folders")
        worker = create_worker(training_updates, prepared, _start_thread=False, _ignore_errors=True)
        return self.runner.start(worker, "CVBM fine-tune", total or 0, detail="Preparing the training data…",
                                 message=message, on_update=self._on_update, on_finished=self._on_finished)

    def cancel(self):
        """Stop the running fine-tune at the next step; the active model stays as it is."""
        if self.status.running:
            self.runner.stop()
            self.status.message = f"Cancelling after the step in progress ({self._last_step()})…"

    def _last_step(self) -> str:
        event = self.status.last_event
        return "the start" if event is None else describe_event(event)

    def _prepare(self) -> Union[Prepared, FolderRun]:
        """Copy everything the run needs now (later edits change nothing): from layers the prepared run
        (``workers.prepare_run``), from folders (checked by name) what the worker prepares it from."""
        folders = self.data.chosen_folders() if self.data.from_folders else None
        settings = self.settings
        planning = self._plan_settings() if settings.planned else None
        config, weights = (None, settings.weights()) if planning else settings.training_config()
        shown = self._plan[1:] if self._plan is not None and self._plan[0] == folders else None
        run_settings = RunSettings(settings.dim(), settings.active_config() if settings.from_active else None,
                                   weights, settings.fields["seed"].value, config, planning, shown)
        self._run_plan_key = (folders, planning)
        self._start_trained = settings.from_active and models.MODEL_STORE.is_trained()
        if folders is not None:
            return FolderRun(folders, run_settings)
        return prepare_run(*self.data.snapshot(), run_settings)

    def _show_prepared(self, prepared: Prepared) -> Tuple[Optional[int], str]:
        """Show what the prepared run holds out; its length (None: planned in the worker) and message."""
        config, split = prepared.config, prepared.split
        held_out = split.summary()
        self.status.update(pretrain=0 if config is None else config.pretrain_iterations,
                           held_out=held_out, no_held_out=split.reason)
        checked = (f", checked on held-out {held_out}" if held_out
                   else f" (nothing held out to check it: {split.reason})")
        self._run_message = partial(run_message, self._model(config), prepared.data, checked)
        total = None if config is None else config.pretrain_iterations + config.selftrain_iterations
        return total, self._run_message(total)

    # -- updates from the worker (GUI thread) ---------------------------------------------------------
    def _on_update(self, update):
        status = self.status
        if isinstance(update, DataRead):  # folders read in the worker: what is held out
            total, message = self._show_prepared(update.prepared)
            status.update(message=message, **({} if total is None else {"total": total}))
            return
        if isinstance(update, Planned):  # planned in the worker: show what runs
            folders, settings = self._run_plan_key
            self._plan = (folders, settings, update.plan)
            self.settings.show_plan(update.plan)
            config = update.plan.config
            total = config.pretrain_iterations + config.selftrain_iterations
            status.update(pretrain=config.pretrain_iterations, total=total, message=self._run_message(total))
            return
        if isinstance(update, RunReady):
            status.run = update.run
            if status.state == JobState.PREPARING:
                status.state = JobState.RUNNING
            return
        event = update.event
        status.history.append(event)
        if status.initial_dice is None and status.run is not None:  # scored before the first step
            status.initial_dice = status.run.initial_dice
        if event.validation_dice is not None:
            status.held_out_dice = event.validation_dice
        step = event.iteration + (status.pretrain if event.phase == "selftrain" else 0)
        dice = "" if status.held_out_dice is None else f"  ·  held-out Dice {status.held_out_dice:.2f}"
        status.update(step=step, last_event=event,
                      detail=f"{describe_event(event)}  ·  loss {event.losses['total']:.3f}{dice}  ·  "
                             f"{event.elapsed:.0f} s")

    def _on_finished(self):
        status = self.status
        run = status.run
        if run is None or run.phase != "done":
            last = self._last_step()
            status.update(state=JobState.CANCELLED, detail=f"Cancelled at {last}",
                          message=f"Cancelled at {last}; the active model is still '{models.MODEL_STORE.active}'.")
            return
        detail = f"Done: {status.total} steps in {run.elapsed / 60:.1f} min on {run.device} ({run.precision})"
        before, after = run.initial_dice, run.final_dice
        if got_worse(before, after):  # the run's model is discarded
            message = (f"Fine-tuning made the model worse on your held-out corrections "
                       f"({before_after(before, after)}): the active model is still '{models.MODEL_STORE.active}'.")
            status.update(state=JobState.DONE, detail=detail, message=message)
            show_info(f"CVBM fine-tune: {message}")
            return
        taken = models.MODEL_STORE.names()
        name = next(f"fine-tuned {n}" for n in itertools.count(1) if f"fine-tuned {n}" not in taken)
        models.MODEL_STORE.add(name, run.final_model(), run.config, trained=self._start_trained)
        checked = (f"Held-out Dice on your corrections: {before_after(before, after)}. " if before is not None
                   else f"Not checked on held-out corrections: {status.no_held_out}. " if status.no_held_out else "")
        status.update(state=JobState.DONE, detail=detail,
                      message=f"{checked}'{name}' is now the active model (the Segment widget uses it). "
                              "Save model… writes it for `cvbm predict`.")
        show_info(f"CVBM fine-tune finished: '{name}' is now the active model")

