"""The "Fine-tune with unlabeled data" widget: CVBM semi-supervised training from the viewer.

It is made of panels (``gui.widgets``): the training data, the settings, the progress with its
loss plot, and the shared model panel. The job's one source of truth is a
:class:`~.job_status.TrainingStatus`; the worker (``gui.workers.training_updates``) yields typed
updates that this widget applies to it on the GUI thread. Cancel stops the run at the next step and
keeps the active model.

Part of the user's corrections is held out (``core.holdout``, spec 6): the run validates on it
about ten times, keeps its best model and is judged by it. A finished run's model joins
``MODEL_STORE`` as the active model unless its held-out Dice is below the starting model's
(:func:`got_worse`).
"""

import dataclasses
import itertools
from functools import partial
from typing import Callable, Optional, Tuple

from napari.qt.threading import create_worker
from napari.utils.notifications import show_info
from napari.utils.theme import get_theme
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QVBoxLayout, QWidget

from ..core.classes import infer_num_classes, interpret_labels
from ..core.config import TrainConfig
from ..core.data import Case
from ..core.errors import CVBMInputError
from ..core.holdout import Holdout, split_corrections
from ..core.training import PHASE_NAMES, ProgressEvent, TrainingRun
from . import models
from .job_status import JobState, TrainingStatus
from .jobs import JobRunner
from .widgets.model_panel import ModelPanel
from .widgets.training_data import TrainingDataPanel
from .widgets.training_progress import TrainingProgressPanel
from .widgets.training_settings import TrainingSettingsPanel
from .workers import RunReady, run_from_arrays, run_from_folders, training_updates

VALIDATIONS = 10  # held-out checks in a run, about


def describe_event(event: ProgressEvent) -> str:
    return f"{PHASE_NAMES[event.phase].capitalize()} {event.iteration}/{event.total}"


def before_after(before: float, after: float) -> str:
    return f"before {before:.2f}, after {after:.2f}"


def got_worse(before: Optional[float], after: Optional[float]) -> bool:
    """Whether the held-out Dice fell, at the two decimals the user is shown (a run that changes it
    by noise is not worse)."""
    return before is not None and after is not None and round(after, 2) < round(before, 2)


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

    def reset_choices(self, *_):
        """napari calls this when layers change: the layer pickers follow."""
        self.data.reset_choices()

    @property
    def running(self) -> bool:
        return self.status.running

    @property
    def run(self) -> Optional[TrainingRun]:
        return self.status.run

    def _show_state(self, state: JobState):
        self.start_button.setEnabled(not self.status.running)
        self.cancel_button.setEnabled(state in (JobState.PREPARING, JobState.RUNNING))

    # -- starting and stopping ----------------------------------------------------------------------
    def start(self):
        """Snapshot the inputs and start fine-tuning in a worker; returns the worker (None if refused)."""
        if not self.runner.idle():
            return None
        try:
            build, config, data, split = self._prepare()
        except CVBMInputError as exc:
            self.runner.refuse(exc)
            return None
        total = config.pretrain_iterations + config.selftrain_iterations
        held_out = split.summary() if split else ""
        self.status.update(pretrain=config.pretrain_iterations, run=None, last_event=None, history=[],
                           held_out=held_out, no_held_out=split.reason if split else "",
                           initial_dice=None, held_out_dice=None)
        model = (f"Fine-tuning '{models.MODEL_STORE.active}'" if self.settings.from_active
                 else f"Training a new {config.dim}D network (width {config.width})")
        checked = (f", checked on held-out {held_out}" if held_out else
                   f" (nothing held out to check it: {split.reason})" if split else "")
        worker = create_worker(training_updates, build, _start_thread=False, _ignore_errors=True)
        return self.runner.start(worker, "CVBM fine-tune", total, detail="Preparing the training data…",
                                 message=f"{model} for {total} steps on {data}{checked}…",
                                 on_update=self._on_update, on_finished=self._on_finished)

    def cancel(self):
        """Stop the running fine-tune at the next step; the active model stays as it is."""
        if self.status.running:
            self.runner.stop()
            self.status.message = f"Cancelling after the step in progress ({self._last_step()})…"

    def _last_step(self) -> str:
        event = self.status.last_event
        return "the start" if event is None else describe_event(event)

    def _prepare(self) -> Tuple[Callable[[], TrainingRun], TrainConfig, str, Optional[Holdout]]:
        """Copy everything the run needs now (later edits change nothing): how to build the run,
        its config, a description of the data and, from layers, the held-out split of the labels."""
        if self.data.from_folders:
            folders = self.data.chosen_folders()
            config, weights = self.settings.training_config()
            return (partial(run_from_folders, folders, config, weights), config,
                    f"the images in {folders['images']}", None)
        labeled, unlabeled = self.data.snapshot()
        active = self.settings.active_config() if self.settings.from_active else None
        given = None if active is None else active.num_classes
        labels = interpret_labels({name: label for name, _, label, *_ in labeled}, given, what="labels layer")
        labeled = [(name, image, labels[name], *rest) for name, image, _, *rest in labeled]
        config, weights = self.settings.training_config(infer_num_classes(labels.values(), given))
        _check_model_fits(config, labeled, unlabeled)
        split = split_corrections([Case(*pair) for pair in labeled], seed=config.seed)
        if split.held_out:
            total = config.pretrain_iterations + config.selftrain_iterations
            config = dataclasses.replace(config, validate_every=max(1, round(total / VALIDATIONS)))
        return (partial(run_from_arrays, split.train, unlabeled, config, weights, split.held_out), config,
                f"{len(labeled)} labeled + {len(unlabeled)} unlabeled images", split)

    # -- updates from the worker (GUI thread) ---------------------------------------------------------
    def _on_update(self, update):
        status = self.status
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


def _check_model_fits(config: TrainConfig, labeled, unlabeled):
    for name, _, label, *_ in labeled:
        if label.max() >= config.num_classes:
            raise CVBMInputError(f"'{name}' has label values up to {int(label.max())} but the model "
                                 f"has {config.num_classes} classes (0..{config.num_classes - 1})")
    for name, image, *_ in labeled + unlabeled:
        if config.dim == 3 and image.ndim != 3:
            raise CVBMInputError(f"'{name}' is a 2D image but the model is a 3D network: "
                                 f"start from a new 2D network instead")
