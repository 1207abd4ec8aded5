"""Segment widget: pick an image and a model, press Segment, inspect the fg and bg views.

Prediction runs in a napari thread worker (progress in the activity dock); the results become
layers (see :mod:`napari_cvbm.gui.layers`). "Compare fg/bg" shows the confidence of the two
views side by side in napari's grid mode. When the shared model store changes (a checkpoint was
loaded, a model fine-tuned or picked), the last segmented image is segmented again.
"""

import time
from typing import Optional

import napari.layers
import numpy as np
import torch
from magicgui.widgets import CheckBox, ComboBox, Container, Label, create_widget
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QPushButton, QVBoxLayout, QWidget
from superqt.utils import signals_blocked

from ..core.errors import CVBMInputError
from ..core.predictor import Predictor
from . import models
from .layers import CONFIDENCE, find_layer, show_prediction

MODE_TIPS = {
    "fg": "foreground head: the ordinary segmentation, at plain-network cost (CVBM)",
    "mix": "mixing layer that fuses the fg and bg heads (CVBM+)",
    "avg": "mean of the fg view and the bg view (CVBM++)",
}


def available_devices():
    """Device choices that work on this machine."""
    mps = getattr(torch.backends, "mps", None)
    return (["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
            + (["mps"] if mps is not None and mps.is_available() else []))


def describe_model(model, config) -> str:
    """One line for the user, e.g. "3D V-Net, width 6, 2 classes"."""
    if config.dim == 3:
        text = f"3D V-Net, width {config.width}, {config.num_classes} classes"
    else:
        text = f"2D U-Net, width {config.width}, {config.num_classes} classes, slice by slice"
        if config.slice_size:
            text += " (slices resized to {}×{})".format(*config.slice_size)
    if not getattr(model, "background_branch", True):
        text += "; no background branch: fg output only"
    return text


def image_problem(layer) -> Optional[str]:
    """Why ``layer`` cannot be segmented, or None."""
    if layer is None:
        return "No image to segment: open an image (File > Open, or a napari-cvbm sample) and pick it."
    if layer.rgb:
        return f"'{layer.name}' is an RGB image; CVBM segments single-channel grey-value images."
    if layer.multiscale:
        return f"'{layer.name}' is a multiscale (pyramid) image; open a single-resolution image."
    if layer.ndim not in (2, 3):
        return (f"'{layer.name}' has {layer.ndim} dimensions; CVBM segments one 2D slice (y, x) or one "
                "3D volume (z, y, x). Split channels or time points into separate layers first.")
    return None


def _predict_or_message(predictor: Predictor, image_layer, **kwargs):
    """Worker body: the prediction, or the message of a CVBMInputError (a returned exception would
    be re-raised by the worker and reported with a traceback); other errors propagate."""
    try:
        return predictor(np.asarray(image_layer.data), **kwargs)
    except CVBMInputError as error:
        return str(error)


class SegmentWidget(QWidget):
    """Segment an image layer with a CVBM model and show every view of the prediction."""

    _progress_changed = Signal(int)  # percent, emitted from the worker thread

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._store = models.MODEL_STORE  # shared with the Fine-tune widget
        self.last_worker = None
        self._pbar = None
        self._last_run = None  # (image layer, model) of the last successful segmentation
        self._rerun_pending = False
        self._compare_state = None
        self._build()
        self._progress_changed.connect(self._show_progress)
        store, callback = self._store, self._on_model_changed
        store.changed.connect(callback)
        self.destroyed.connect(lambda *_: store.changed.disconnect(callback))
        self._refresh_models()

    # ------------------------------------------------------------------ building
    def _build(self):
        self._image = create_widget(annotation=napari.layers.Image, label="Image",
                                    options={"choices": self._image_choices})
        self._model = ComboBox(label="Model", choices=self._store.names())
        self._model.changed.connect(self._on_model_picked)
        self._model_info = Label(label="")
        self._mode = ComboBox(label="Output", choices=list(MODE_TIPS), value="fg")
        self._mode.tooltip = "\n".join(f"{k}: {v}" for k, v in MODE_TIPS.items())
        for i, tip in enumerate(MODE_TIPS.values()):
            self._mode.native.setItemData(i, tip, Qt.ToolTipRole)
        self._device = ComboBox(label="Device", choices=available_devices(), value="auto")
        self._largest = CheckBox(text="keep largest component", value=False,
                                 tooltip="keep only the largest connected piece of each class")
        form = Container(widgets=[self._image, self._model, self._model_info, self._mode,
                                  self._device, self._largest])
        load = QPushButton("Load checkpoint…")
        load.setToolTip("load a model saved by `cvbm train` or this plugin (.pt)")
        load.clicked.connect(self._ask_checkpoint)
        self._segment_button = QPushButton("Segment")
        self._segment_button.clicked.connect(lambda: self.segment())
        self._compare_button = QPushButton("Compare fg/bg")
        self._compare_button.setCheckable(True)
        self._compare_button.setToolTip("show the fg-view and bg-view confidence side by side")
        self._compare_button.toggled.connect(self.set_compare)
        self._status = Label(value="Pick an image and press Segment.")
        self._status.native.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self._segment_button)
        buttons.addWidget(self._compare_button)
        layout = QVBoxLayout(self)
        layout.addWidget(form.native)
        layout.addWidget(load)
        layout.addLayout(buttons)
        layout.addWidget(self._status.native)
        layout.addStretch(1)

    def _image_choices(self, _widget):
        """Image layers, except the maps this plugin made."""
        return [layer for layer in self.viewer.layers
                if isinstance(layer, napari.layers.Image) and "cvbm_role" not in layer.metadata]

    def reset_choices(self, *_):
        """Keep the image picker in sync with the layer list (napari calls this on layer events)."""
        self._image.reset_choices()

    # ------------------------------------------------------------------ models
    def _refresh_models(self):
        store = self._store
        with self._model.changed.blocked():
            self._model.choices = store.names()
            self._model.value = store.active
        try:
            self._model_info.value = describe_model(*store.get())
        except CVBMInputError as error:
            self._model_info.value = f"not available: {error}"

    def _on_model_picked(self, name):
        self._store.activate(name)

    def _ask_checkpoint(self):
        path, _ = QFileDialog.getOpenFileName(self, "Load CVBM checkpoint", "",
                                              "Checkpoints (*.pt *.pth);;All files (*)")
        if path:
            self.load_checkpoint(path)

    def load_checkpoint(self, path) -> Optional[str]:
        """Load a checkpoint into the shared model store and make it active; its name, or None."""
        name = self._store.load_file_or_notify(path)
        if name is None:
            return None
        show_info(f"Loaded {name}: {self._model_info.value}")
        return name

    def _on_model_changed(self, _active):
        self._refresh_models()
        if self._last_run is None or self._last_run[0] not in self.viewer.layers:
            return
        try:
            model = self._store.get()[0]
        except CVBMInputError:
            return
        if model is self._last_run[1]:
            return
        if self.busy:
            self._rerun_pending = True
        else:
            self.segment(self._last_run[0])

    # ------------------------------------------------------------------ segmenting
    @property
    def busy(self) -> bool:
        """True while a segmentation runs."""
        return self._pbar is not None

    def segment(self, image_layer=None):
        """Segment ``image_layer`` (default: the picked image) in a worker; the worker, or None if refused."""
        if self.busy:
            show_warning("A segmentation is already running; wait for it to finish.")
            return None
        image_layer = image_layer or self._image.value
        problem = image_problem(image_layer)
        if problem:
            show_error(problem)
            return None
        try:
            model, config = self._store.get()
        except CVBMInputError as error:
            show_error(str(error))
            return None
        worker = create_worker(
            _predict_or_message, Predictor(model, config), image_layer, mode=self._mode.value, heads="all",
            device=self._device.value, largest_component=self._largest.value,
            progress=lambda fraction: self._progress_changed.emit(int(round(100 * fraction))),
            _ignore_errors=True)
        run = (image_layer, model, self._store.active, time.perf_counter())
        worker.returned.connect(lambda result: self._on_result(run, result))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._pbar = progress(total=100, desc=f"CVBM: segmenting {image_layer.name}")
        self._segment_button.setEnabled(False)
        self._status.value = f"Segmenting '{image_layer.name}' with {self._store.active}…"
        self.last_worker = worker
        worker.start()
        return worker

    def _show_progress(self, percent):
        if self._pbar is not None and percent > self._pbar.n:
            self._pbar.update(percent - self._pbar.n)

    def _on_result(self, run, result):
        image_layer, model, model_name, started = run
        if isinstance(result, str):
            show_error(result)
            self._status.value = f"Could not segment '{image_layer.name}': {result}"
            return
        if image_layer not in self.viewer.layers:
            self._status.value = f"'{image_layer.name}' was closed before its segmentation finished."
            return
        comparing = self._compare_state is not None
        self.set_compare(False)  # compare mode follows the newest result
        show_prediction(self.viewer, image_layer, result)
        self._last_run = (image_layer, model)
        self.set_compare(comparing)
        share = 100.0 * np.count_nonzero(result.labels) / result.labels.size
        self._status.value = (
            f"Segmented '{image_layer.name}' with {model_name} ({result.mode} output) "
            f"in {time.perf_counter() - started:.1f} s: {share:.1f}% foreground. "
            "Edit the segmentation layer with napari's label tools; "
            "Compare fg/bg shows where the two views are unsure.")

    def _on_error(self, error):
        self._status.value = f"Segmentation failed: {error}"

    def _on_finished(self):
        self._pbar.close()
        self._pbar = None
        self._segment_button.setEnabled(True)
        if self._rerun_pending:
            self._rerun_pending = False
            self._on_model_changed(self._store.active)

    # ------------------------------------------------------------------ compare
    def set_compare(self, on: bool) -> bool:
        """Show (True) the fg and bg confidence of the last segmented image side by side, or restore."""
        on = bool(on)
        if on == (self._compare_state is not None):
            return on
        if on:
            on = self._enter_compare()
        else:
            self._leave_compare()
        with signals_blocked(self._compare_button):
            self._compare_button.setChecked(on)
        return on

    def _confidence_layers(self):
        image = self._image.value
        sources = [image.name] if image is not None else []
        if self._last_run is not None:
            sources.append(self._last_run[0].name)
        for source in sources:
            pair = [find_layer(self.viewer, source, CONFIDENCE[view]) for view in ("fg", "bg")]
            if None not in pair:
                return pair
        return None

    def _enter_compare(self) -> bool:
        pair = self._confidence_layers()
        if pair is None:
            show_warning("Nothing to compare yet: segment an image with a model that has a background "
                         "branch first.")
            return False
        grid = self.viewer.canvas.grid
        self._compare_state = {
            "visible": {layer: layer.visible for layer in self.viewer.layers},
            "grid": (grid.enabled, grid.stride, grid.shape),
            "overlays": {layer: (layer.name_overlay.visible, layer.colorbar.visible, layer.colorbar.position)
                         for layer in pair},
        }
        for layer in self.viewer.layers:
            layer.visible = layer in pair
        for layer in pair:  # name top left, colour scale bottom right of each grid cell
            layer.name_overlay.visible = True
            layer.colorbar.update({"visible": True, "position": "bottom_right"})
        grid.stride, grid.shape, grid.enabled = 1, (1, 2), True
        self.viewer.reset_view()
        self._status.value = ("Left: confidence of the fg view; right: confidence of the bg view (same "
                              "colours and range). Dark = unsure. Uncheck Compare to go back.")
        return True

    def _leave_compare(self):
        state, self._compare_state = self._compare_state, None
        grid = self.viewer.canvas.grid
        grid.enabled, grid.stride, grid.shape = state["grid"]
        for layer, (name_visible, colorbar_visible, colorbar_position) in state["overlays"].items():
            layer.name_overlay.visible = name_visible
            layer.colorbar.update({"visible": colorbar_visible, "position": colorbar_position})
        for layer, visible in state["visible"].items():
            if layer in self.viewer.layers:
                layer.visible = visible
        self.viewer.reset_view()
