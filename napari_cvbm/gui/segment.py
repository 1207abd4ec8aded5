"""Segment widget: pick an image and a model, press Segment, inspect the fg and bg views.

The image is a grey or RGB layer or, for a model of several channels, one aligned layer per
channel (:mod:`napari_cvbm.gui.widgets.channel_picker`); the results lie on the image layer.
Prediction runs in a napari thread worker on a copy of the layer (``gui.jobs`` shows its progress
and errors the same way as the Fine-tune widget); the results become layers
(:mod:`napari_cvbm.gui.layers`). "Compare fg/bg" shows the confidence of the two views side by
side (:mod:`napari_cvbm.gui.compare`). "Slices to correct next" lists the image's slices (a 2D
image's regions), least sure first (:mod:`napari_cvbm.gui.widgets.slice_ranking`). An optional field
of view (a fundus photograph's disc) makes everything outside it certain background. When the shared
model store changes (a checkpoint was loaded, a model fine-tuned or picked), the last segmented image
is segmented again.
"""

import time
from functools import partial
from typing import Optional

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container
from napari.layers import Layer
from napari.qt.threading import create_worker
from napari.utils.notifications import show_warning
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QHBoxLayout, QPushButton, QVBoxLayout, QWidget
from superqt.utils import signals_blocked

from ..core.channels import check_channels
from ..core.device import available_devices
from ..core.errors import CVBMInputError
from ..core.guidance import suggestions
from ..core.predictor import Predictor
from . import models
from .compare import CompareView, confidence_pair
from .job_status import JobState, JobStatus
from .jobs import JobRunner
from .layers import SEGMENTATION, show_prediction
from .snapshots import field_of_view, image_input
from .widgets.channel_picker import ChannelPicker, model_channels, refresh_choices
from .widgets.job_panel import JobPanel
from .widgets.model_panel import ModelPanel
from .widgets.slice_ranking import SliceRankingPanel
from .widgets.training_data import fov_picker
from .workers import segmentation

MODE_TIPS = {
    "fg": "foreground head: the ordinary segmentation, at plain-network cost (CVBM)",
    "mix": "mixing layer that fuses the fg and bg heads (CVBM+)",
    "avg": "mean of the fg view and the bg view (CVBM++)",
}


NO_IMAGE = "No image to segment: open an image (File > Open, or a napari-cvbm sample) and pick it."
FOV_TIP = ("field of view (optional): a labels or image layer of the image's shape, non-zero inside; "
           "everything outside is background in the results and is never suggested for correction")


def class_shares(labels: np.ndarray, config) -> str:
    """" (right ventricle 1.2%, myocardium 2.0%, ...)": each named class's share of the image; "" unnamed."""
    names = config.class_names
    if not names:
        return ""
    counts = np.bincount(labels.ravel(), minlength=len(names))
    return " (" + ", ".join(f"{n} {100.0 * c / labels.size:.1f}%" for n, c in zip(names[1:], counts[1:])) + ")"


class SegmentWidget(QWidget):
    """Segment an image layer with a CVBM model and show every view of the prediction."""

    _progress_changed = Signal(int)  # percent, emitted from the worker thread

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.status = JobStatus(detail="", message="Pick an image and press Segment.")
        self.runner = JobRunner(self, self.status, what="segmentation", refused="Not segmented")
        self.compare = CompareView(napari_viewer)
        self._last_run = None  # (image layers, model) of the last successful segmentation
        self._rerun_pending = False
        self._build()
        self._progress_changed.connect(partial(setattr, self.status, "step"))
        self.status.events.state.connect(lambda _: self._segment_button.setEnabled(not self.busy))
        self.runner.lifetime.connect(models.MODEL_STORE.changed, self._on_model_changed)

    def _build(self):
        self.picker = ChannelPicker(self.viewer)
        self._image = self.picker.image
        self.picker.set_channels(model_channels(models.active_config()))
        self.model_panel = ModelPanel(self.status)
        self._mode = ComboBox(label="Output", choices=list(MODE_TIPS), value="fg")
        self._mode.tooltip = "\n".join(f"{k}: {v}" for k, v in MODE_TIPS.items())
        for i, tip in enumerate(MODE_TIPS.values()):
            self._mode.native.setItemData(i, tip, Qt.ToolTipRole)
        self._device = ComboBox(label="Device", choices=available_devices(), value="auto")
        self._largest = CheckBox(text="keep largest component", value=False,
                                 tooltip="keep only the largest connected piece of each class (set from the "
                                         "model: on when that scored better on its validation data)")
        self._fov = fov_picker(self.viewer)
        self._fov.label, self._fov.tooltip = "Field of view", FOV_TIP
        self._segment_button = QPushButton("Segment")
        self._segment_button.clicked.connect(lambda: self.segment())
        self._compare_button = QPushButton("Compare fg/bg")
        self._compare_button.setCheckable(True)
        self._compare_button.setToolTip("show the fg-view and bg-view confidence side by side")
        self._compare_button.toggled.connect(self.set_compare)
        buttons = QHBoxLayout()
        buttons.addWidget(self._segment_button)
        buttons.addWidget(self._compare_button)
        layout = QVBoxLayout(self)
        self.picker.margins = (9, 9, 9, 0)
        layout.addWidget(self.picker.native)
        layout.addWidget(self.model_panel)
        layout.addWidget(Container(widgets=[self._mode, self._device, self._fov, self._largest]).native)
        layout.addLayout(buttons)
        layout.addWidget(JobPanel(self.status))
        self.ranking = SliceRankingPanel(self.viewer, self.runner.lifetime)
        layout.addWidget(self.ranking)
        layout.addStretch(1)

    def _follow_model_settings(self):
        """The largest-component box shows the active model's own setting, the image pickers its channels."""
        config = models.active_config()
        if config is not None:
            self._largest.value = bool(config.largest_component)
            self.picker.set_channels(model_channels(config))

    def reset_choices(self, *_):
        """Keep the image pickers in sync with the layer list (napari calls this on layer events)."""
        self.picker.refresh()
        refresh_choices(self._fov)

    def load_checkpoint(self, path) -> Optional[str]:
        """Load a checkpoint into the shared model store and make it active; its name, or None."""
        return self.model_panel.load_model(path)

    def _on_model_changed(self, _active):
        self.model_panel.refresh()
        self._follow_model_settings()
        if self._last_run is None or any(layer not in self.viewer.layers for layer in self._last_run[0]):
            return
        try:
            model, config = models.MODEL_STORE.get()
        except CVBMInputError:
            return
        if model is self._last_run[1]:
            return
        if self.busy:
            self._rerun_pending = True
            return
        try:
            self._read(self._last_run[0], config, stand_in=True)
        except CVBMInputError as error:  # e.g. the new model takes other channels: nothing to refresh
            self.status.message = f"'{self._last_run[0][0].name}' was not segmented again: {error}"
            return
        self.segment(self._last_run[0])

    # ------------------------------------------------------------------ segmenting
    @property
    def busy(self) -> bool:
        """True while a segmentation runs."""
        return self.status.running

    @staticmethod
    def _read(layers, config, stand_in: bool = False):
        """The image in ``layers`` as the engine reads it, refused unless it fits the model of ``config``."""
        image = image_input(layers, model_channels(config), stand_in)
        check_channels(config.in_channels, config.channel_names or (), image.channel_names, f"'{layers[0].name}'")
        return image

    def segment(self, image_layer=None):
        """Segment ``image_layer`` (a layer or the channel layers of one image; default: those picked) in
        a worker; the worker, or None if refused."""
        if not self.runner.idle():
            return None
        if image_layer is None:
            layers = self.picker.layers()
        else:
            layers = [image_layer] if isinstance(image_layer, Layer) else list(image_layer)
        try:
            if layers[0] is None:
                raise CVBMInputError(NO_IMAGE)
            model, config = models.MODEL_STORE.get()
            image = self._read(layers, config)
            valid = field_of_view(self._fov.value, layers[0])
        except CVBMInputError as error:
            self.runner.refuse(error)
            return None
        name, image_layer = models.MODEL_STORE.active, layers[0]
        worker = create_worker(
            segmentation, Predictor(model, config), image.array, spacing=image.spacing,
            channels=image.channel_names, valid=valid, mode=self._mode.value, heads="all",
            device=self._device.value, largest_component=self._largest.value,
            progress=lambda fraction: self._progress_changed.emit(int(round(100 * fraction))),
            _start_thread=False, _ignore_errors=True)
        run = (layers, model, name, time.perf_counter(), config, image.spacing)
        return self.runner.start(worker, f"CVBM: segmenting {image_layer.name}", 100, detail="",
                                 message=f"Segmenting '{image_layer.name}' with {name}…",
                                 on_result=partial(self._on_result, run), on_finished=self._on_finished)

    def _on_result(self, run, result):
        layers, model, model_name, started, config, spacing = run
        image_layer = layers[0]  # the results lie on it (the channel layers are aligned with it)
        if image_layer not in self.viewer.layers:
            self.status.message = f"'{image_layer.name}' was closed before its segmentation finished."
            return
        comparing = self.compare.shown
        self.set_compare(False)  # compare mode follows the newest result
        made = show_prediction(self.viewer, image_layer, result, config.class_names)
        self.ranking.show_ranking(image_layer, made[SEGMENTATION], suggestions(result, config, spacing))
        self._last_run = (layers, model)
        self.set_compare(comparing)
        share = 100.0 * np.count_nonzero(result.labels) / result.labels.size
        self.status.update(state=JobState.DONE, message=(
            f"Segmented '{image_layer.name}' with {model_name} ({result.mode} output) "
            f"in {time.perf_counter() - started:.1f} s: {share:.1f}% foreground{class_shares(result.labels, config)}. "
            "Edit the segmentation layer with napari's label tools; "
            "Compare fg/bg shows where the two views are unsure."))

    def _on_finished(self):
        if self._rerun_pending:
            self._rerun_pending = False
            self.status.state = JobState.DONE
            self._on_model_changed(models.MODEL_STORE.active)

    # ------------------------------------------------------------------ compare
    def set_compare(self, on: bool) -> bool:
        """Show (True) the fg and bg confidence of the last segmented image side by side, or restore."""
        on = bool(on)
        if on != self.compare.shown:
            if not on:
                self.compare.restore()
            else:
                on = self._enter_compare()
        with signals_blocked(self._compare_button):
            self._compare_button.setChecked(on)
        return on

    def _enter_compare(self) -> bool:
        image = self._image.value
        sources = ([image.name] if image is not None else []) + \
            ([self._last_run[0][0].name] if self._last_run is not None else [])
        pair = confidence_pair(self.viewer, sources)
        if pair is None:
            show_warning("Nothing to compare yet: segment an image with a model that has a background "
                         "branch first.")
            return False
        self.compare.show(pair)
        self.status.message = ("Left: confidence of the fg view; right: confidence of the bg view (same "
                               "colours and range). Dark = unsure. Uncheck Compare to go back.")
        return True
