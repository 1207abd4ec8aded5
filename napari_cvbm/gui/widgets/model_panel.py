"""The shared model panel: which model is active, what it is, Load model…, Save model… and
Export bioimage.io… (a bioimage.io model package that other tools run, written in a worker thread).

Both widgets show one; all of them read and write the session's ``MODEL_STORE``, so a model
loaded or fine-tuned in one is the active model in the other.
"""

from pathlib import Path
from typing import Optional

from magicgui.widgets import ComboBox, Container, Label
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from ...core import bioimageio, bundled
from ...core.errors import CVBMInputError
from ...core.outputs import refuse_existing
from .. import models
from ..job_status import JobStatus


def describe_model(model, config) -> str:
    """One line for the user, e.g. "2D U-Net, width 16, 2 classes, 3 channels (red, green, blue),
    128×128 windows at the image's resolution"."""
    dim = "3D V-Net" if config.dim == 3 else "2D U-Net"
    channels = f"{config.in_channels} channel{'s' if config.in_channels > 1 else ''}"
    if config.channel_names:
        channels += f" ({', '.join(config.channel_names)})"
    text = f"{dim}, width {config.width}, {config.num_classes} classes, {channels}"
    if config.dim == 3:
        text += (", at {}×{}×{} mm".format(*(f"{s:g}" for s in config.spacing)) if config.spacing
                 else ", at each image's own spacing")
    elif config.slice_size:
        text += ", slice by slice (slices resized to {}×{})".format(*config.slice_size)
    else:
        text += ", {}×{} windows at the image's resolution".format(*config.patch_size)
    if not getattr(model, "background_branch", True):
        text += "; no background branch: fg output only"
    return text


class ModelPanel(QWidget):
    """The active model (a picker and its description, with ``picker``) and its file buttons.

    Messages go to ``status.message``; failures also to one error notification.
    """

    def __init__(self, status: JobStatus, picker: bool = True, parent=None):
        super().__init__(parent)
        self.status = status
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.choice = ComboBox(label="Model", choices=models.MODEL_STORE.names())
        self.choice.changed.connect(self._picked)
        self.info = Label(label="")
        self.info.native.setWordWrap(True)  # a long model line wraps to the dock's width, never widens it
        self.info.native.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        if picker:
            form = Container(widgets=[self.choice, self.info])
            form.margins = (9, 0, 9, 0)
            layout.addWidget(form.native)
        self.load_button, self.save_button = QPushButton("Load model…"), QPushButton("Save model…")
        self.load_button.setToolTip("load a model saved by `cvbm train` or this plugin (.pt), or a bioimage.io "
                                    "package exported by napari-cvbm (.zip)")
        self.save_button.setToolTip("write the active model as a checkpoint that `cvbm predict` reads")
        self.load_button.clicked.connect(self._load_dialog)
        self.save_button.clicked.connect(self._save_dialog)
        self.export_button = QPushButton("Export bioimage.io…")
        self.export_button.setToolTip("write the active model as a bioimage.io model package (.zip) that other "
                                      "bioimage.io tools can run and this plugin loads")
        self.export_button.clicked.connect(self._export_dialog)
        buttons = QHBoxLayout()
        buttons.addWidget(self.load_button)
        buttons.addWidget(self.save_button)
        buttons.addWidget(self.export_button)
        layout.addLayout(buttons)
        self.refresh()

    def refresh(self, *_):
        """Show the store's models and its active one (call when the store changes)."""
        store = models.MODEL_STORE
        with self.choice.changed.blocked():
            self.choice.choices = store.names()
            self.choice.value = store.active
        try:
            self.info.value = "\n".join(filter(None, [describe_model(*store.get()), store.details()]))
        except CVBMInputError as error:
            self.info.value = f"not available: {error}"

    def _picked(self, name):
        models.MODEL_STORE.activate(name)

    def load_model(self, path) -> Optional[str]:
        """Load a checkpoint (CLI or plugin) and make it the active model; its name, or None on failure."""
        try:
            name = models.MODEL_STORE.load_file(path)
        except CVBMInputError as error:
            show_error(str(error))
            return None
        self.status.message = f"Loaded '{name}' ({self.info.value}); it is now the active model."
        show_info(f"Loaded {name}")
        return name

    def save_model(self, path, overwrite: bool = False) -> Optional[Path]:
        """Write the active model as a checkpoint `cvbm predict` reads; None (and a notification) on failure.

        An existing file is refused unless ``overwrite`` (the save dialog has asked the user)."""
        try:
            out = models.MODEL_STORE.save(path, overwrite=overwrite)
        except (CVBMInputError, OSError) as exc:
            show_error(f"could not save the model: {exc}")
            return None
        self.status.message = f"Saved '{models.MODEL_STORE.active}' to {out}"
        return out

    def export_package(self, path, overwrite: bool = False):
        """Write the active model as a bioimage.io package (.zip) in a worker thread (tracing it and its
        test tensors take seconds); the worker, or None (and a notification) when refused at once.

        An existing file is refused unless ``overwrite`` (the export dialog has asked the user)."""
        store = models.MODEL_STORE
        name = store.active
        try:
            refuse_existing(path, overwrite)
            model, config = store.get()
            card = bundled.card(name) if store.is_bundled(name) else None
        except CVBMInputError as exc:
            show_error(f"could not export the model: {exc}")
            return None
        worker = create_worker(bioimageio.export_package, model, config, path, name=bioimageio.package_name(name),
                               card=card, overwrite=overwrite, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda out: setattr(
            self.status, "message", f"Exported '{name}' as a bioimage.io model package to {out}"))
        worker.errored.connect(lambda exc: show_error(f"could not export the model: {exc}"))
        worker.finished.connect(lambda: self.export_button.setEnabled(True))
        self.export_button.setEnabled(False)
        self.status.message = f"Exporting '{name}' as a bioimage.io model package…"
        worker.start()
        return worker

    def _export_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self, "Export bioimage.io model package", "cvbm_model.zip",
                                              "bioimage.io model package (*.zip)")
        if path:  # Qt asked before replacing the file picked, not one renamed here with .zip
            target = path if Path(path).suffix else path + ".zip"
            self.export_package(target, overwrite=target == path)

    def _save_dialog(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save model", "cvbm_model.pt", "CVBM model (*.pt)")
        if path:  # Qt asked before replacing the file picked, not one renamed here with .pt
            target = path if Path(path).suffix else path + ".pt"
            self.save_model(target, overwrite=target == path)

    def _load_dialog(self):
        path, _ = QFileDialog.getOpenFileName(self, "Load model", "",
                                              "CVBM model (*.pt *.pth *.zip);;All files (*)")
        if path:
            self.load_model(path)
