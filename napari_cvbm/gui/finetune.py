"""The "Fine-tune with unlabeled data" widget: CVBM semi-supervised training from the viewer.

Labeled data are (image, labels) layer pairs or folders on disk; partly corrected volumes count
only on the slices the user annotated or edited (``core.annotation``). Training runs
``TrainingRun.events()`` in a napari generator worker: every step updates the phase label,
the progress bar and the live loss plot; Cancel stops it at the next step and keeps the
active model. The result joins ``MODEL_STORE`` as the active model.
"""

import dataclasses
import itertools
import re
import time
from functools import partial
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from napari.utils.theme import get_theme
from qtpy.QtCore import Qt, QThreadPool, QTimer
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .._reader import GEOMETRY
from ..core import config as core_config
from ..core.annotation import annotated_mask, counted_slices, format_slices
from ..core.classes import infer_num_classes, interpret_labels
from ..core.config import TrainConfig
from ..core.data import load_cases, make_case
from ..core.errors import CVBMInputError
from ..core.geometry import check_same_place
from ..core.training import PHASE_NAMES, ProgressEvent, TrainingRun
from . import models
from .loss_plot import LossPlot

PRESETS = {"CPU laptop (~5 min on the sample data)": "cpu", "GPU (paper settings)": "paper"}
START_ACTIVE, START_NEW_3D, START_NEW_2D = "active model", "new 3D network", "new 2D network"  # item 0 names the model
SOURCE_LAYERS, SOURCE_FOLDERS = "Layers in the viewer", "Folders on disk"
CLOSE_WAIT_S = 60.0  # when the application quits, wait this long for a stopped step to end
SUMMARY_DELAY_MS = 150  # recount annotated slices once painting pauses


class TrainingFailed(Exception):
    """An unexpected error inside the training thread (not a RuntimeError, which superqt would hide)."""


# -- pure helpers ---------------------------------------------------------------------------------
def layer_array(layer) -> np.ndarray:
    """The full-resolution data of a layer (level 0 of a multiscale one), as an array view."""
    return np.asarray(layer.data[0] if layer.multiscale else layer.data)


def source_images(viewer) -> List[Image]:
    """Image layers a user may train on: not RGB and not made by this plugin (probability maps...)."""
    return [layer for layer in viewer.layers if isinstance(layer, Image) and not layer.rgb
            and layer.metadata.get("cvbm_role") is None]


def default_image(viewer, labels: Labels) -> Optional[Image]:
    """The image a labels layer belongs to: its ``cvbm_source``, else the first image of its shape."""
    images = source_images(viewer)
    source = labels.metadata.get("cvbm_source")
    shape = layer_array(labels).shape
    return next((image for image in images if image.name == source), None) or \
        next((image for image in images if layer_array(image).shape == shape), None)


def layer_counted_slices(labels: Labels, complete: bool) -> np.ndarray:
    """The slices of ``labels`` that count as labeled (see ``core.annotation``)."""
    return counted_slices(layer_array(labels), labels.metadata.get("cvbm_original"), complete)


def describe_pair(image: Optional[Image], labels: Labels, complete: bool) -> str:
    """One line telling the user which slices of ``labels`` count, or what is wrong."""
    data = layer_array(labels)
    if image is None:
        return f"{labels.name}: choose its image"
    if layer_array(image).shape != data.shape:
        return f"{labels.name}: shape {data.shape} does not match image '{image.name}' {layer_array(image).shape}"
    slices = layer_counted_slices(labels, complete)
    total = 1 if data.ndim < 3 else data.shape[0]
    if not len(slices):
        return f"{labels.name}: {_nothing_counted(labels)}"
    if data.ndim < 3:
        return f"{labels.name}: the whole image counts as labeled"
    return f"{labels.name}: slices {format_slices(slices)} count as labeled ({len(slices)} of {total})"


def _nothing_counted(labels: Labels) -> str:
    if "cvbm_original" in labels.metadata:
        return "nothing was corrected yet (edit the wrong slices, or tick 'all slices are complete')"
    return "no slice is annotated yet (paint some labels)"


def parse_size(text: str, dim: int) -> Tuple[int, ...]:
    """'32, 48, 48' -> (32, 48, 48); raises CVBMInputError unless there are ``dim`` whole numbers."""
    numbers = re.findall(r"\d+", text)
    if len(numbers) != dim or re.sub(r"[\d\s,x×]", "", text):
        raise CVBMInputError(f"patch size must be {dim} whole numbers, e.g. "
                             f"{', '.join(['32', '48', '48'][-dim:])}; got '{text}'")
    return tuple(int(n) for n in numbers)


def describe_event(event: ProgressEvent) -> str:
    return f"{PHASE_NAMES[event.phase].capitalize()} {event.iteration}/{event.total}"


def _train_steps(job: "Job"):
    """Worker-thread body: build the run from the snapshot, then yield one event per step."""
    try:
        job.run = job.build()
        yield from job.run.events()
    except CVBMInputError:
        raise
    except Exception as exc:  # superqt would swallow a RuntimeError (e.g. from torch)
        raise TrainingFailed(f"{type(exc).__name__}: {exc}") from exc


class _Connections:
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


@dataclasses.dataclass
class Job:
    """One fine-tune: how to build its run (in the worker thread), the worker and what it did."""

    build: Callable[[], TrainingRun]
    pretrain: int
    total: int
    worker: object = None
    run: Optional[TrainingRun] = None
    last: str = "the start"
    error: Optional[str] = None
    started: float = dataclasses.field(default_factory=time.perf_counter)
    slots: _Connections = dataclasses.field(default_factory=_Connections)

    def stop(self):
        """Ask the worker to stop at the next step (it returns at once; the step in progress ends in
        the worker's thread)."""
        self.worker.quit()


class _Lifetime(_Connections):
    """The widget's connections and running job, released when the widget (or the viewer) goes."""

    def __init__(self):
        super().__init__()
        self.job: Optional[Job] = None

    def close(self, *_):
        super().close()
        if self.job is not None:
            self.job.slots.close()
            self.job.stop()
            _wait_for_workers_when_quitting()


def _wait_for_workers_when_quitting():
    """Closing a viewer never blocks its GUI thread: a stopped job finishes its step in its own thread.
    Only when the whole application quits does it wait (up to CLOSE_WAIT_S) for that step to end, so
    that no thread outlives the interpreter."""
    app = QApplication.instance()
    if app is not None and not app.property("cvbm_waits_for_workers"):
        app.setProperty("cvbm_waits_for_workers", True)
        app.aboutToQuit.connect(lambda: QThreadPool.globalInstance().waitForDone(int(CLOSE_WAIT_S * 1000)))


# -- the widget -----------------------------------------------------------------------------------
class PairRow(QWidget):
    """One labeled pair: an image layer, a labels layer and a remove button."""

    def __init__(self, viewer, labels: Optional[Labels] = None, image: Optional[Image] = None):
        super().__init__()
        self.image, self.labels = QComboBox(), QComboBox()
        self.remove = QToolButton(text="✕", toolTip="Remove this pair")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for combo, tip in ((self.image, "image layer"), (self.labels, "its labels layer")):
            combo.setToolTip(tip)
            combo.setMinimumContentsLength(8)
            combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            layout.addWidget(combo, 1)
        layout.addWidget(self.remove)
        self.fill(viewer, image, labels)

    def fill(self, viewer, image: Optional[Image] = None, labels: Optional[Labels] = None):
        """Offer the current layers, keeping the chosen layers (found by identity, so renames are fine)."""
        for combo, layers, choice in (
                (self.image, source_images(viewer), image or self.image.currentData()),
                (self.labels, [la for la in viewer.layers if isinstance(la, Labels)],
                 labels or self.labels.currentData())):
            combo.blockSignals(True)
            combo.clear()
            combo.addItem("—", None)
            for layer in layers:
                combo.addItem(layer.name, layer)
            combo.setCurrentIndex(next((i + 1 for i, la in enumerate(layers) if la is choice), 0))
            combo.blockSignals(False)

    def layers(self) -> Tuple[Optional[Image], Optional[Labels]]:
        return self.image.currentData(), self.labels.currentData()


class FineTuneWidget(QWidget):
    """Fine-tune the active model (or train a new one) with CVBM on labeled + unlabeled data."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.run: Optional[TrainingRun] = None
        self.events_seen: List[ProgressEvent] = []
        self.rows: List[PairRow] = []
        self._preset_key = None
        self._lifetime = _Lifetime()
        self._summary_timer = QTimer(self, singleShot=True, interval=SUMMARY_DELAY_MS)
        self._summary_timer.timeout.connect(self.update_summary)

        layout = QVBoxLayout(self)
        layout.addWidget(self._inputs_box())
        layout.addWidget(self._settings_box())
        layout.addWidget(self._training_box())
        layout.addStretch(1)

        self._connect_viewer()
        if self._active_config() is None:  # no usable active model (e.g. the starter is missing)
            self.start_from.setCurrentIndex(1)
        self._on_model_changed()

    # -- layout ---------------------------------------------------------------------------------
    def _inputs_box(self) -> QWidget:
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(_heading("Training data"))
        self.source = QComboBox()
        self.source.addItems([SOURCE_LAYERS, SOURCE_FOLDERS])
        layout.addWidget(self.source)
        self.source_pages = [self._layers_page(), self._folders_page()]
        for page in self.source_pages:
            layout.addWidget(page)
        self.source.currentIndexChanged.connect(self._show_source)
        self._show_source(0)
        return box

    def _show_source(self, index: int):
        """Show the input page chosen in the source box (layers or folders)."""
        for i, page in enumerate(self.source_pages):
            page.setVisible(i == index)
        self._schedule_summary()

    def _layers_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Labeled pairs (image ← labels):"))
        self.rows_box = QVBoxLayout()
        layout.addLayout(self.rows_box)
        add = QPushButton("Add pair")
        add.clicked.connect(lambda: self.add_pair())
        layout.addWidget(add)
        self.complete = QCheckBox("all slices are complete")
        self.complete.setToolTip("Count every slice of the labels, not only the ones painted or corrected")
        self.complete.toggled.connect(self._schedule_summary)
        layout.addWidget(self.complete)
        self.summary = QLabel(wordWrap=True)
        self.summary.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.summary)
        layout.addWidget(QLabel("Unlabeled images:"))
        self.unlabeled = QListWidget()
        self.unlabeled.setMaximumHeight(80)
        layout.addWidget(self.unlabeled)
        return page

    def _folders_page(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        self.folders = {}
        for key, text in (("images", "Labeled images"), ("labels", "Labels"), ("unlabeled", "Unlabeled images")):
            self.folders[key] = QLineEdit(placeholderText="folder")
            browse = QToolButton(text="…")
            browse.clicked.connect(partial(self._browse_folder, self.folders[key]))
            row = QHBoxLayout()
            row.addWidget(self.folders[key])
            row.addWidget(browse)
            form.addRow(text, row)
        form.addRow(QLabel("Label files count on every slice; labels are matched to images by file name.",
                           wordWrap=True))
        return page

    def _settings_box(self) -> QWidget:
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(_heading("Settings"))
        form = QFormLayout()
        self.preset = QComboBox()
        self.preset.addItems(list(PRESETS))
        self.start_from = QComboBox()
        self.start_from.addItems([START_ACTIVE, START_NEW_3D, START_NEW_2D])
        form.addRow("Preset", self.preset)
        form.addRow("Start from", self.start_from)
        layout.addLayout(form)
        self.advanced_toggle = QToolButton(text="Advanced", checkable=True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.RightArrow)
        self.advanced_toggle.toggled.connect(self._show_advanced)
        layout.addWidget(self.advanced_toggle)
        self.advanced = self._advanced_box()
        self.advanced.setVisible(False)
        layout.addWidget(self.advanced)
        self.preset.currentIndexChanged.connect(self._apply_preset)
        self.start_from.currentIndexChanged.connect(self._apply_preset)
        return box

    def _advanced_box(self) -> QWidget:
        box = QWidget()
        form = QFormLayout(box)
        form.setContentsMargins(12, 0, 0, 0)
        self.pretrain = _spin(1, 10 ** 6)
        self.selftrain = _spin(0, 10 ** 6)
        self.lr = QDoubleSpinBox(decimals=4, minimum=1e-4, maximum=1.0, singleStep=0.001)
        self.batch = _spin(2, 64, step=2)
        self.patch = QLineEdit()
        self.width_ = _spin(2, 64)
        self.seed = _spin(0, 2 ** 31 - 1)
        for text, field in (("Pre-training iterations", self.pretrain), ("Self-training iterations", self.selftrain),
                            ("Learning rate", self.lr), ("Batch size", self.batch), ("Patch size", self.patch),
                            ("Width (new network)", self.width_), ("Seed", self.seed)):
            form.addRow(text, field)
        return box

    def _training_box(self) -> QWidget:
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        self.start_button = QPushButton("Fine-tune with unlabeled data")
        self.cancel_button = QPushButton("Cancel", enabled=False)
        self.start_button.clicked.connect(lambda: self.start())
        self.cancel_button.clicked.connect(lambda: self.cancel())
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button, 1)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.phase_label = QLabel("Not started")
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        theme = _theme_colors(self.viewer)
        self.loss_plot = LossPlot(self, *theme)
        self.status = QLabel(wordWrap=True)
        self.status.setTextInteractionFlags(Qt.TextSelectableByMouse)
        for w in (self.phase_label, self.progress, self.loss_plot, self.status):
            layout.addWidget(w)
        files = QGridLayout()
        self.save_button, self.load_button = QPushButton("Save model…"), QPushButton("Load model…")
        self.save_button.clicked.connect(self._save_dialog)
        self.load_button.clicked.connect(self._load_dialog)
        files.addWidget(self.save_button, 0, 0)
        files.addWidget(self.load_button, 0, 1)
        layout.addLayout(files)
        return box

    def _show_advanced(self, shown: bool):
        self.advanced.setVisible(shown)
        self.advanced_toggle.setArrowType(Qt.DownArrow if shown else Qt.RightArrow)

    # -- viewer and model store wiring ------------------------------------------------------------
    def _connect_viewer(self):
        life = self._lifetime
        layers = self.viewer.layers.events
        life.connect(layers.inserted, self._on_layer_inserted)
        life.connect(layers.removed, self._on_layer_removed)
        life.connect(layers.reordered, self._refresh_layer_lists)
        life.connect(models.MODEL_STORE.changed, self._on_model_changed)
        for layer in self.viewer.layers:
            self._watch(layer)
            if isinstance(layer, Labels):
                self.add_pair(layer)
        self._refresh_layer_lists()
        # closing the viewer deletes this widget too: stop training and let go of the viewer
        self.destroyed.connect(partial(_Lifetime.close, life))

    def _watch(self, layer):
        """Recount slices when a labels layer is painted or replaced; relist layers on renames."""
        self._lifetime.connect(layer.events.name, self._refresh_layer_lists)
        if isinstance(layer, Labels):
            for name in ("data", "paint", "labels_update"):
                self._lifetime.connect(getattr(layer.events, name), self._schedule_summary)

    def _on_layer_inserted(self, event):
        layer = event.value
        self._watch(layer)
        if isinstance(layer, Labels):
            self.add_pair(layer)
        self._refresh_layer_lists()

    def _on_layer_removed(self, event):
        layer = event.value
        for emitter in [layer.events.name, *(getattr(layer.events, n) for n in ("data", "paint", "labels_update")
                                              if isinstance(layer, Labels))]:
            self._lifetime.disconnect(emitter)
        for row in [r for r in self.rows if r.labels.currentData() is layer]:
            self._remove_pair(row)
        self._refresh_layer_lists()

    def add_pair(self, labels: Optional[Labels] = None, image: Optional[Image] = None) -> PairRow:
        """Add a labeled-pair row; by default a labels layer is paired with its source image."""
        if labels is not None and image is None:
            image = default_image(self.viewer, labels)
        row = PairRow(self.viewer, labels, image)
        row.remove.clicked.connect(partial(self._remove_pair, row))
        for combo in (row.image, row.labels):
            combo.currentIndexChanged.connect(self._schedule_summary)
        self.rows.append(row)
        self.rows_box.addWidget(row)
        self._schedule_summary()
        return row

    def _remove_pair(self, row: PairRow):
        self.rows.remove(row)
        row.setParent(None)
        row.deleteLater()
        self._schedule_summary()

    def _refresh_layer_lists(self, *_):
        for row in self.rows:
            row.fill(self.viewer)
        paired = {id(r.image.currentData()) for r in self.rows}
        checked = {id(item.data(Qt.UserRole)): item.checkState() for item in self._unlabeled_items()}
        self.unlabeled.clear()
        for image in source_images(self.viewer):
            item = QListWidgetItem(image.name)
            item.setData(Qt.UserRole, image)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(checked.get(id(image), Qt.Unchecked if id(image) in paired else Qt.Checked))
            self.unlabeled.addItem(item)
        self._schedule_summary()

    def _on_model_changed(self, *_):
        self.start_from.setItemText(0, f"active model: {models.MODEL_STORE.active}")
        self._apply_preset()

    def _schedule_summary(self, *_):
        self._summary_timer.start()

    def update_summary(self) -> str:
        """Show (and return) which slices of each labeled pair count as labeled."""
        if self.source.currentText() == SOURCE_FOLDERS:
            text = "Folders are read when fine-tuning starts."
        else:
            lines = [describe_pair(*row.layers(), self.complete.isChecked())
                     for row in self.rows if row.layers()[1] is not None]
            text = "\n".join(lines) or "No labeled pair: add a labels layer (paint or correct a segmentation)."
        self.summary.setText(text)
        return text

    # -- settings ----------------------------------------------------------------------------------
    def _from_active(self) -> bool:
        return self.start_from.currentIndex() == 0

    def _dim(self) -> int:
        if self._from_active():
            config = self._active_config()
            return config.dim if config is not None else 3
        return 3 if self.start_from.currentText() == START_NEW_3D else 2

    def _active_config(self) -> Optional[TrainConfig]:
        try:
            return models.MODEL_STORE.get()[1]
        except CVBMInputError:
            return None

    def _apply_preset(self, *_):
        """Fill the advanced fields from the preset when it or the network changes (user edits survive
        other changes); when fine-tuning, show the active model's fixed network shape."""
        key = (self.preset.currentText(), self._dim(), self._from_active())
        base = core_config.preset(PRESETS[key[0]], key[1])
        active = self._active_config() if self._from_active() else None
        if key != self._preset_key:
            self._preset_key = key
            self.pretrain.setValue(base.pretrain_iterations)
            self.selftrain.setValue(base.selftrain_iterations)
            self.lr.setValue(base.lr)
            self.batch.setValue(base.batch_labeled)
            self._show_shape(base)
        if active is not None:
            self._show_shape(active)
        for field in (self.patch, self.width_):
            field.setEnabled(active is None)

    def _show_shape(self, config: TrainConfig):
        self.patch.setText(", ".join(str(s) for s in config.slice_size or config.patch_size))
        self.width_.setValue(config.width)

    def training_config(self, num_classes: int = 2) -> Tuple[TrainConfig, Optional[dict]]:
        """The run's config and initial weights (None for a new network); bad settings raise CVBMInputError."""
        name, dim = PRESETS[self.preset.currentText()], self._dim()
        values = dict(pretrain_iterations=self.pretrain.value(), selftrain_iterations=self.selftrain.value(),
                      lr=self.lr.value(), batch_labeled=self.batch.value(), batch_unlabeled=self.batch.value(),
                      seed=self.seed.value())
        if self._from_active():
            model, config = models.MODEL_STORE.get()
            values.update(config.architecture(), patch_size=config.patch_size, slice_size=config.slice_size)
            weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            size = parse_size(self.patch.text(), dim)
            values.update(width=self.width_.value(), patch_size=size, num_classes=num_classes,
                          slice_size=size if dim == 2 else None)
            weights = None
        return core_config.preset(name, dim, **values), weights

    # -- training -----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._lifetime.job is not None

    def start(self):
        """Snapshot the inputs and start fine-tuning in a worker; returns the worker (None if refused)."""
        if self.running:
            show_warning("A fine-tune is already running: wait for it to finish or press Cancel.")
            return None
        try:
            build, config, data = self._prepare()
        except CVBMInputError as exc:
            show_error(str(exc))
            self.status.setText(f"Not started: {exc}")
            return None
        job = Job(build, config.pretrain_iterations, config.pretrain_iterations + config.selftrain_iterations)
        job.worker = create_worker(_train_steps, job, _start_thread=False, _ignore_errors=True,
                                   _progress={"total": job.total, "desc": "CVBM fine-tune"})
        for signal, slot in ((job.worker.yielded, self._on_event), (job.worker.errored, self._on_error),
                             (job.worker.finished, self._on_finished)):
            job.slots.connect(signal, partial(slot, job))
        self._lifetime.job, self.worker, self.run = job, job.worker, None
        self.events_seen = []
        self.loss_plot.clear(job.total, selftrain_start=job.pretrain if config.selftrain_iterations else None)
        self.progress.setRange(0, job.total)
        self.progress.setValue(0)
        self.phase_label.setText("Preparing the training data…")
        model = (f"Fine-tuning '{models.MODEL_STORE.active}'" if self._from_active()
                 else f"Training a new {config.dim}D network (width {config.width})")
        self.status.setText(f"{model} for {job.total} steps on {data}…")
        self._set_running(True)
        job.worker.start()
        return job.worker

    def cancel(self):
        """Stop the running fine-tune at the next step; the active model stays as it is."""
        job = self._lifetime.job
        if job is not None:
            job.stop()
            self.cancel_button.setEnabled(False)
            self.status.setText(f"Cancelling after the step in progress ({job.last})…")

    def _set_running(self, running: bool):
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _prepare(self) -> Tuple[Callable[[], TrainingRun], TrainConfig, str]:
        """Copy everything the run needs now (later edits change nothing): how to build the run,
        its config and a description of the data."""
        if self.source.currentText() == SOURCE_FOLDERS:
            folders = {k: f.text().strip() for k, f in self.folders.items()}
            if not folders["images"] or not folders["labels"]:
                raise CVBMInputError("choose the folders of the labeled images and of their labels")
            config, weights = self.training_config()
            new_network = weights is None
            return (partial(_run_from_folders, folders, config, weights, new_network), config,
                    f"the images in {folders['images']}")
        labeled, unlabeled = self._snapshot()
        active = self._active_config() if self._from_active() else None
        given = None if active is None else active.num_classes
        labels = interpret_labels({name: label for name, _, label, *_ in labeled}, given, what="labels layer")
        labeled = [(name, image, labels[name], *rest) for name, image, _, *rest in labeled]
        config, weights = self.training_config(infer_num_classes(labels.values(), given))
        self._check_model_fits(config, labeled, unlabeled)
        return (partial(_run_from_arrays, labeled, unlabeled, config, weights), config,
                f"{len(labeled)} labeled + {len(unlabeled)} unlabeled images")

    def _snapshot(self):
        """Copies of the labeled pairs (name, image, labels, annotated mask, spacing) and unlabeled images."""
        complete = self.complete.isChecked()
        labeled, problems = [], []
        for row in self.rows:
            image, labels = row.layers()
            if labels is None:
                continue
            if image is None:
                raise CVBMInputError(f"choose the image that '{labels.name}' labels")
            label = np.array(layer_array(labels))
            if layer_array(image).shape != label.shape:
                raise CVBMInputError(f"'{labels.name}' has shape {label.shape} but image '{image.name}' "
                                     f"has shape {layer_array(image).shape}: they must match")
            check_same_place(image.metadata.get(GEOMETRY), labels.metadata.get(GEOMETRY),
                             f"'{labels.name}' vs image '{image.name}'")
            slices = layer_counted_slices(labels, complete)
            if not len(slices):
                problems.append(f"'{labels.name}': {_nothing_counted(labels)}")
                continue
            annotated = None if len(slices) == (1 if label.ndim < 3 else label.shape[0]) \
                else annotated_mask(label.shape, slices)
            labeled.append((labels.name, np.array(layer_array(image)), label, annotated, tuple(image.scale)))
        if not labeled:
            raise CVBMInputError("no labeled data: " + ("; ".join(problems) if problems else
                                 "add a labeled pair (an image and a labels layer with some slices painted)"))
        for problem in problems:
            show_warning(f"{problem} — not used")
        unlabeled = [(image.name, np.array(layer_array(image)), tuple(image.scale))
                     for image in self.checked_unlabeled()]
        return labeled, unlabeled

    def _unlabeled_items(self) -> List[QListWidgetItem]:
        return [self.unlabeled.item(i) for i in range(self.unlabeled.count())]

    def checked_unlabeled(self) -> List[Image]:
        """The image layers ticked as unlabeled data."""
        return [item.data(Qt.UserRole) for item in self._unlabeled_items() if item.checkState() == Qt.Checked]

    def _check_model_fits(self, config: TrainConfig, labeled, unlabeled):
        for name, _, label, *_ in labeled:
            if label.max() >= config.num_classes:
                raise CVBMInputError(f"'{name}' has label values up to {int(label.max())} but the model "
                                     f"has {config.num_classes} classes (0..{config.num_classes - 1})")
        for name, image, *_ in labeled + unlabeled:
            if config.dim == 3 and image.ndim != 3:
                raise CVBMInputError(f"'{name}' is a 2D image but the model is a 3D network: "
                                     f"start from a new 2D network instead")

    def _on_event(self, job: Job, event: ProgressEvent):
        self.run = job.run
        self.events_seen.append(event)
        job.last = describe_event(event)
        step = event.iteration + (job.pretrain if event.phase == "selftrain" else 0)
        self.phase_label.setText(f"{job.last}  ·  loss {event.losses['total']:.3f}  ·  {event.elapsed:.0f} s")
        self.progress.setValue(step)
        self.loss_plot.add(step, event.losses)

    def _on_error(self, job: Job, exc: Exception):
        job.error = str(exc) if isinstance(exc, CVBMInputError) else f"fine-tuning failed: {exc}"
        show_error(job.error)

    def _on_finished(self, job: Job):
        job.slots.close()
        self._lifetime.job = None
        self.run = job.run
        self._set_running(False)
        if job.error is not None:
            self.phase_label.setText("Stopped")
            self.status.setText(f"Not trained: {job.error}")
        elif job.run is None or job.run.phase != "done":
            self.phase_label.setText(f"Cancelled at {job.last}")
            self.status.setText(f"Cancelled at {job.last}; the active model is still "
                                f"'{models.MODEL_STORE.active}'.")
        else:
            self._adopt(job)

    def _adopt(self, job: Job):
        """Make the finished run's model the active one."""
        taken = models.MODEL_STORE.names()
        name = next(f"fine-tuned {n}" for n in itertools.count(1) if f"fine-tuned {n}" not in taken)
        models.MODEL_STORE.add(name, job.run.final_model(), job.run.config)
        minutes = (time.perf_counter() - job.started) / 60
        run = job.run
        self.phase_label.setText(f"Done: {job.total} steps in {minutes:.1f} min on {run.device} ({run.precision})")
        self.status.setText(f"'{name}' is now the active model (the Segment widget uses it). "
                            f"Save model… writes it for `cvbm predict`.")
        show_info(f"CVBM fine-tune finished: '{name}' is now the active model")

    # -- model files -------------------------------------------------------------------------------
    def save_model(self, path, overwrite: bool = False) -> Optional[Path]:
        """Write the active model as a checkpoint `cvbm predict` reads; None (and a notification) on failure.

        An existing file is refused unless ``overwrite`` (the save dialog has asked the user)."""
        try:
            out = models.MODEL_STORE.save(path, overwrite=overwrite)
        except (CVBMInputError, OSError) as exc:
            show_error(f"could not save the model: {exc}")
            return None
        self.status.setText(f"Saved '{models.MODEL_STORE.active}' to {out}")
        return out

    def load_model(self, path) -> Optional[str]:
        """Load a checkpoint (CLI or plugin) and make it the active model; None on failure."""
        name = models.MODEL_STORE.load_file_or_notify(path)
        if name is None:
            return None
        self.status.setText(f"Loaded '{name}'; it is now the active model.")
        return name

    def _save_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save model", "cvbm_model.pt", "CVBM model (*.pt)")
        if path:  # Qt asked before replacing the file picked, not one renamed here with .pt
            target = path if Path(path).suffix else path + ".pt"
            self.save_model(target, overwrite=target == path)

    def _load_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self, "Load model", "", "CVBM model (*.pt);;All files (*)")
        if path:
            self.load_model(path)

    def _browse_folder(self, field: QLineEdit):
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder", field.text())
        if folder:
            field.setText(folder)


# -- run builders (called in the worker thread) ------------------------------------------------------
def _run_from_arrays(labeled, unlabeled, config: TrainConfig, weights) -> TrainingRun:
    labeled_cases = [make_case(name, image, label, annotated=annotated, spacing=spacing,
                               num_classes=config.num_classes)
                     for name, image, label, annotated, spacing in labeled]
    unlabeled_cases = [make_case(name, image, spacing=spacing) for name, image, spacing in unlabeled]
    return TrainingRun(config, labeled_cases, unlabeled_cases, initial_weights=weights)


def _run_from_folders(folders: dict, config: TrainConfig, weights, new_network: bool) -> TrainingRun:
    labeled = load_cases(folders["images"], folders["labels"],
                         num_classes=None if new_network else config.num_classes)
    unlabeled = load_cases(folders["unlabeled"]) if folders["unlabeled"] else []
    if new_network:
        config = dataclasses.replace(config, num_classes=infer_num_classes(c.label for c in labeled))
    return TrainingRun(config, labeled, unlabeled, initial_weights=weights)


def _heading(text: str) -> QLabel:
    return QLabel(f"<b>{text}</b>")


def _spin(low: int, high: int, step: int = 1) -> QSpinBox:
    return QSpinBox(minimum=low, maximum=high, singleStep=step)


def _theme_colors(viewer) -> Tuple[str, str]:
    """(background, text) colours of the viewer's theme, for the loss plot."""
    theme = get_theme(viewer.theme)
    return theme.background.as_hex(), theme.text.as_hex()
