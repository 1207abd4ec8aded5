"""The "Fine-tune with unlabeled data" widget: CVBM semi-supervised training from the viewer.

It is made of panels (``gui.widgets``): the training data, the settings, the progress with its
loss plot, and the shared model panel. The job's one source of truth is a
:class:`~.job_status.TrainingStatus`; the worker (``gui.workers.training_updates``) yields typed
updates that this widget applies to it on the GUI thread. Cancel stops the run at the next step and
keeps the active model.

With the planned entry the run is planned from the layers (``core.planning``, as ``cvbm train``
does): a worker plans it shortly after the data or the settings change (a newer request supersedes
an older one) and the settings panel shows the plan. Start trains with that plan, or plans again in
its worker when the plan shown is not the one for the data and settings at that moment. Folder
runs are not planned: they use the preset the plan starts from and the Advanced form.

Part of the user's corrections is held out (``core.holdout``, spec 6): the run validates on it
about ten times, keeps its best model and is judged by it. A finished run's model joins
``MODEL_STORE`` as the active model unless its held-out Dice is below the starting model's
(``core.holdout.got_worse``).
"""

import dataclasses
import itertools
from functools import partial
from typing import Callable, NamedTuple, Optional, Tuple

from napari.qt.threading import create_worker
from napari.utils.notifications import show_info
from napari.utils.theme import get_theme
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from ..core.channels import check_channels
from ..core.classes import infer_num_classes, interpret_labels
from ..core.config import TrainConfig
from ..core.errors import CVBMInputError
from ..core.holdout import Holdout, got_worse, split_corrections
from ..core.planning import Plan, fingerprint
from ..core.training import PHASE_NAMES, ProgressEvent, TrainingRun
from . import models
from .job_status import JobState, TrainingStatus
from .jobs import Connections, JobRunner, failure_message
from .widgets.channel_picker import model_channels
from .widgets.model_panel import ModelPanel
from .widgets.training_data import TrainingDataPanel
from .widgets.training_progress import TrainingProgressPanel
from .widgets.training_settings import TrainingSettingsPanel
from .workers import Planned, RunReady, input_channels, planned, run_from_arrays, run_from_folders, training_updates

PLAN_DELAY_MS = 400  # plan once the data and settings have not changed for this long
FOLDERS_NOT_PLANNED = "Plan: folder runs are not planned; they use the {} preset and the Advanced settings."


def describe_event(event: ProgressEvent) -> str:
    return f"{PHASE_NAMES[event.phase].capitalize()} {event.iteration}/{event.total}"


def run_message(model: str, data: str, checked: str, total: Optional[int]) -> str:
    """What the status says a starting run does (``total`` None: its plan is still being made)."""
    steps = f" for {total} steps" if total is not None else " (planning the run first)"
    return f"{model}{steps} on {data}{checked}…"


class Prepared(NamedTuple):
    """A run's snapshot taken at Start: how to build it from its config, the config (None: ``planner``
    makes it in the worker), the data in words and, from layers, the held-out split."""

    build: Callable[[TrainConfig], TrainingRun]
    config: Optional[TrainConfig]
    planner: Optional[Callable[[], Plan]]
    data: str
    split: Optional[Holdout]


class PlanInputs(NamedTuple):
    """What a plan is made from: the cases (images may be stand-ins of their shape) and the settings."""

    labeled: list
    unlabeled: list
    device: object
    budget_s: float
    overrides: dict

    def settings(self) -> tuple:
        """What the plan depends on besides the data."""
        return self.device, self.budget_s, self.overrides


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
        self._plan: Optional[Tuple[tuple, Plan]] = None  # (the settings it was made with, the plan shown)
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
        if self.data.from_folders:
            line.setText(FOLDERS_NOT_PLANNED.format(self.settings.preset_name()))
            return None
        try:
            inputs = self._plan_inputs(*self.data.plan_snapshot())
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

    def _plan_inputs(self, labeled, unlabeled) -> PlanInputs:
        """The plan's inputs for layer snapshots (see ``TrainingDataPanel.snapshot``)."""
        settings = self.settings
        return PlanInputs(list(labeled), list(unlabeled), settings.device(), settings.budget_s(), settings.overrides())

    def _planned(self, request: int, settings: tuple, plan: Plan):
        if request == self._plan_request:
            self._plan = (settings, plan)
            self.settings.show_plan(plan)

    def _plan_failed(self, request: int, error: Exception):
        if request == self._plan_request:
            self.settings.plan_line.setText(f"Plan: {failure_message(error, 'planning')}")

    def _shown_plan(self, inputs: PlanInputs) -> Optional[Plan]:
        """The plan shown, if it was made from these inputs."""
        if self._plan is None:
            return None
        settings, plan = self._plan
        fresh = settings == inputs.settings() and plan.fingerprint == fingerprint(inputs.labeled, inputs.unlabeled)
        return plan if fresh else None

    # -- starting and stopping ----------------------------------------------------------------------
    def start(self):
        """Snapshot the inputs and start fine-tuning in a worker; returns the worker (None if refused)."""
        if not self.runner.idle():
            return None
        try:
            prepared = self._prepare()
        except CVBMInputError as exc:
            self.runner.refuse(exc)
            return None
        config, split = prepared.config, prepared.split
        self._plan_request += 1  # a plan in flight now comes too late
        pretrain = 0 if config is None else config.pretrain_iterations
        total = 0 if config is None else pretrain + config.selftrain_iterations
        held_out = split.summary() if split else ""
        self.status.update(pretrain=pretrain, run=None, last_event=None, history=[],
                           held_out=held_out, no_held_out=split.reason if split else "",
                           initial_dice=None, held_out_dice=None)
        model = (f"Fine-tuning '{models.MODEL_STORE.active}'" if self.settings.from_active
                 else f"Training a new {self.settings.dim()}D network"
                 + (f" (width {config.width})" if config is not None else ""))
        checked = (f", checked on held-out {held_out}" if held_out else
                   f" (nothing held out to check it: {split.reason})" if split else "")
        self._run_message = partial(run_message, model, prepared.data, checked)
        worker = create_worker(training_updates, prepared.build, config, prepared.planner,
                               _start_thread=False, _ignore_errors=True)
        return self.runner.start(worker, "CVBM fine-tune", total, detail="Preparing the training data…",
                                 message=self._run_message(None if config is None else total),
                                 on_update=self._on_update, on_finished=self._on_finished)

    def cancel(self):
        """Stop the running fine-tune at the next step; the active model stays as it is."""
        if self.status.running:
            self.runner.stop()
            self.status.message = f"Cancelling after the step in progress ({self._last_step()})…"

    def _last_step(self) -> str:
        event = self.status.last_event
        return "the start" if event is None else describe_event(event)

    def _prepare(self) -> Prepared:
        """Copy everything the run needs now (later edits change nothing): how to build the run, its
        config or how to plan it, a description of the data and, from layers, the held-out split."""
        settings = self.settings
        if self.data.from_folders:
            folders = self.data.chosen_folders()
            config, weights = settings.training_config()
            return Prepared(partial(run_from_folders, folders, weights=weights), config, None,
                            f"the images in {folders['images']}", None)
        labeled, unlabeled = self.data.snapshot()
        active = settings.active_config() if settings.from_active else None
        given = None if active is None else active.num_classes
        labels = interpret_labels({case.name: case.label for case in labeled}, given, what="labels layer")
        labeled = [dataclasses.replace(case, label=labels[case.name]) for case in labeled]
        num_classes = infer_num_classes(labels.values(), given)
        _check_model_fits(num_classes, settings.dim(), labeled, unlabeled, active)
        config, planner = None, None
        if settings.planned:
            inputs = self._plan_inputs(labeled, unlabeled)
            shown = self._shown_plan(inputs)
            if shown is not None:
                config = dataclasses.replace(shown.config, num_classes=num_classes)
            else:
                planner = partial(planned, *inputs._replace(overrides={**inputs.overrides, "num_classes": num_classes}))
            weights = settings.weights()
        else:
            config, weights = settings.training_config(num_classes)
            if not settings.from_active:  # a preset's new network takes the images' channels
                config = dataclasses.replace(config, **input_channels(labeled))
        split = split_corrections(labeled, seed=settings.fields["seed"].value)
        return Prepared(partial(run_from_arrays, split.train, unlabeled, weights=weights, validation=split.held_out),
                        config, planner, f"{len(labeled)} labeled + {len(unlabeled)} unlabeled images", split)

    # -- updates from the worker (GUI thread) ---------------------------------------------------------
    def _on_update(self, update):
        status = self.status
        if isinstance(update, Planned):  # planned in the worker: show what runs
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
        models.MODEL_STORE.add(name, run.final_model(), run.config)
        checked = (f"Held-out Dice on your corrections: {before_after(before, after)}. " if before is not None
                   else f"Not checked on held-out corrections: {status.no_held_out}. " if status.no_held_out else "")
        status.update(state=JobState.DONE, detail=detail,
                      message=f"{checked}'{name}' is now the active model (the Segment widget uses it). "
                              "Save model… writes it for `cvbm predict`.")
        show_info(f"CVBM fine-tune finished: '{name}' is now the active model")


def _check_model_fits(num_classes: int, dim: int, labeled, unlabeled, active: Optional[TrainConfig]):
    """Refuse cases that a network of ``num_classes`` and ``dim`` (fine-tuned: of config ``active``) cannot
    train on."""
    for case in labeled:
        if case.label.max() >= num_classes:
            raise CVBMInputError(f"'{case.name}' has label values up to {int(case.label.max())} but the model "
                                 f"has {num_classes} classes (0..{num_classes - 1})")
    for case in labeled + unlabeled:
        if dim == 3 and len(case.shape) != 3:
            raise CVBMInputError(f"'{case.name}' is a 2D image but the model is a 3D network: "
                                 f"start from a new 2D network instead")
        if active is not None:
            check_channels(active.in_channels, active.channel_names or (), case.channel_names, f"'{case.name}'")
