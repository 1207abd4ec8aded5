"""The Fine-tune widget's training data: labeled (image, labels) layer pairs and unlabeled image
layers, or folders on disk.

Partly corrected volumes count only on the slices the user annotated or edited
(``core.annotation``); the panel says which, takes the snapshot a run trains on (or the lighter one
a plan reads) and emits ``changed`` whenever the data may have changed.
"""

from functools import partial
from typing import Dict, List, Optional, Tuple

import numpy as np
from magicgui.widgets import ComboBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_warning
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..._reader import GEOMETRY
from ...core.annotation import annotated_mask, counted_slices, format_slices
from ...core.errors import CVBMInputError
from ...core.geometry import check_same_place
from ..jobs import Connections
from ..snapshots import image_of, label_layers, layer_array, shape_only, snapshot, source_images

SOURCE_LAYERS, SOURCE_FOLDERS = "Layers in the viewer", "Folders on disk"
SUMMARY_DELAY_MS = 150  # recount annotated slices once painting pauses
PAINT_EVENTS = ("data", "paint", "labels_update")


def layer_counted_slices(labels: Labels, complete: bool) -> np.ndarray:
    """The slices of ``labels`` that count as labeled (see ``core.annotation``)."""
    return counted_slices(layer_array(labels), labels.metadata.get("cvbm_original"), complete)


def nothing_counted(labels: Labels) -> str:
    if "cvbm_original" in labels.metadata:
        return "nothing was corrected yet (edit the wrong slices, or tick 'all slices are complete')"
    return "no slice is annotated yet (paint some labels)"


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
        return f"{labels.name}: {nothing_counted(labels)}"
    if data.ndim < 3:
        return f"{labels.name}: the whole image counts as labeled"
    return f"{labels.name}: slices {format_slices(slices)} count as labeled ({len(slices)} of {total})"


def _layer_choices(layers):
    """magicgui choices for a layer picker: (name, layer) of the layers ``layers()`` returns."""
    return lambda _widget: [(layer.name, layer) for layer in layers()]


class PairRow(QWidget):
    """One labeled pair: an image layer picker, a labels layer picker and a remove button."""

    def __init__(self, viewer, labels: Optional[Labels] = None, image: Optional[Image] = None):
        super().__init__()
        self.image = ComboBox(choices=_layer_choices(lambda: source_images(viewer)), nullable=True,
                              tooltip="image layer")
        self.labels = ComboBox(choices=_layer_choices(lambda: label_layers(viewer)), nullable=True,
                               tooltip="its labels layer")
        self.image.value, self.labels.value = image, labels
        self.remove = QToolButton(text="✕", toolTip="Remove this pair")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for combo in (self.image, self.labels):
            combo.native.setMinimumContentsLength(8)
            combo.native.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
            layout.addWidget(combo.native, 1)
        layout.addWidget(self.remove)

    def reset_choices(self):
        """Offer the current layers; the chosen ones stay chosen (by identity, so renames are fine)."""
        for combo in (self.image, self.labels):
            chosen = combo.value
            with combo.changed.blocked():
                combo.reset_choices()  # drops a renamed layer's old entry, and with it the choice
                if any(layer is chosen for layer in combo.choices if layer is not None):
                    combo.value = chosen
            if combo.value is not chosen:
                combo.changed.emit(combo.value)

    def layers(self) -> Tuple[Optional[Image], Optional[Labels]]:
        return self.image.value, self.labels.value


class TrainingDataPanel(QWidget):
    """Where the labeled and unlabeled data come from, which slices count, and their snapshot."""

    changed = Signal()  # pairs, labels, ticked unlabeled images or the source changed

    def __init__(self, viewer, lifetime: Connections, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.rows: List[PairRow] = []
        self._lifetime = lifetime
        self._summary_timer = QTimer(self, singleShot=True, interval=SUMMARY_DELAY_MS)
        self._summary_timer.timeout.connect(self.update_summary)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("<b>Training data</b>"))
        self.source = QComboBox()
        self.source.addItems([SOURCE_LAYERS, SOURCE_FOLDERS])
        layout.addWidget(self.source)
        self.pages = [self._layers_page(), self._folders_page()]
        for page in self.pages:
            layout.addWidget(page)
        self.source.currentIndexChanged.connect(self._show_source)
        self._show_source(0)
        self._connect_viewer()

    # -- layout ---------------------------------------------------------------------------------
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
        self.unlabeled.itemChanged.connect(self.changed)
        layout.addWidget(self.unlabeled)
        return page

    def _folders_page(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        self.folders: Dict[str, QLineEdit] = {}
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

    def _show_source(self, index: int):
        for i, page in enumerate(self.pages):
            page.setVisible(i == index)
        self._schedule_summary()

    def _browse_folder(self, field: QLineEdit):
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder", field.text())
        if folder:
            field.setText(folder)

    # -- following the viewer -----------------------------------------------------------------
    def _connect_viewer(self):
        events = self.viewer.layers.events
        self._lifetime.connect(events.inserted, self._on_layer_inserted)
        self._lifetime.connect(events.removed, self._on_layer_removed)
        for layer in self.viewer.layers:
            self._watch(layer)
            if isinstance(layer, Labels):
                self.add_pair(layer)
        self.reset_choices()

    def _watch(self, layer):
        """Recount slices when a labels layer is painted or replaced."""
        if isinstance(layer, Labels):
            for name in PAINT_EVENTS:
                self._lifetime.connect(getattr(layer.events, name), self._schedule_summary)

    def _on_layer_inserted(self, event):
        layer = event.value
        self._watch(layer)
        if isinstance(layer, Labels):
            self.add_pair(layer)

    def _on_layer_removed(self, event):
        layer = event.value
        if isinstance(layer, Labels):
            for name in PAINT_EVENTS:
                self._lifetime.disconnect(getattr(layer.events, name))
        for row in [r for r in self.rows if r.labels.value is layer]:
            self._remove_pair(row)

    def reset_choices(self, *_):
        """Offer the current layers in every picker and in the unlabeled list (napari calls this
        when layers are added, removed, reordered or renamed)."""
        for row in self.rows:
            row.reset_choices()
        paired = {id(r.image.value) for r in self.rows}
        checked = {id(item.data(Qt.UserRole)): item.checkState() for item in self._unlabeled_items()}
        self.unlabeled.clear()
        for image in source_images(self.viewer):
            item = QListWidgetItem(image.name)
            item.setData(Qt.UserRole, image)
            item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
            item.setCheckState(checked.get(id(image), Qt.Unchecked if id(image) in paired else Qt.Checked))
            self.unlabeled.addItem(item)
        self._schedule_summary()

    def add_pair(self, labels: Optional[Labels] = None, image: Optional[Image] = None) -> PairRow:
        """Add a labeled-pair row; by default a labels layer is paired with its source image."""
        if labels is not None and image is None:
            image = image_of(self.viewer, labels)
        row = PairRow(self.viewer, labels, image)
        row.remove.clicked.connect(partial(self._remove_pair, row))
        for combo in (row.image, row.labels):
            combo.changed.connect(self._schedule_summary)
        self.rows.append(row)
        self.rows_box.addWidget(row)
        self._schedule_summary()
        return row

    def _remove_pair(self, row: PairRow):
        self.rows.remove(row)
        row.setParent(None)
        row.deleteLater()
        self._schedule_summary()

    def _unlabeled_items(self) -> List[QListWidgetItem]:
        return [self.unlabeled.item(i) for i in range(self.unlabeled.count())]

    def checked_unlabeled(self) -> List[Image]:
        """The image layers ticked as unlabeled data."""
        return [item.data(Qt.UserRole) for item in self._unlabeled_items() if item.checkState() == Qt.Checked]

    def _schedule_summary(self, *_):
        self._summary_timer.start()
        self.changed.emit()

    def update_summary(self) -> str:
        """Show (and return) which slices of each labeled pair count as labeled."""
        if self.from_folders:
            text = "Folders are read when fine-tuning starts."
        else:
            lines = [describe_pair(*row.layers(), self.complete.isChecked())
                     for row in self.rows if row.layers()[1] is not None]
            text = "\n".join(lines) or "No labeled pair: add a labels layer (paint or correct a segmentation)."
        self.summary.setText(text)
        return text

    # -- what a run trains on -------------------------------------------------------------------
    @property
    def from_folders(self) -> bool:
        return self.source.currentText() == SOURCE_FOLDERS

    def chosen_folders(self) -> Dict[str, str]:
        """The folders (images, labels, unlabeled) typed in; raises CVBMInputError without the first two."""
        folders = {k: f.text().strip() for k, f in self.folders.items()}
        if not folders["images"] or not folders["labels"]:
            raise CVBMInputError("choose the folders of the labeled images and of their labels")
        return folders

    def snapshot(self):
        """Copies of the labeled pairs (name, image, labels, annotated mask, spacing) and of the
        ticked unlabeled images (name, image, spacing); raises CVBMInputError when nothing counts."""
        labeled, problems = self._labeled(snapshot)
        for problem in problems:
            show_warning(f"{problem} — not used")
        return labeled, [(image.name, snapshot(image), tuple(image.scale)) for image in self.checked_unlabeled()]

    def plan_snapshot(self):
        """What a plan reads, as :meth:`snapshot` but with each image a stand-in of its shape (no
        copy; the planner reads no intensities) and without warnings."""
        labeled, _ = self._labeled(shape_only)
        return labeled, [(image.name, shape_only(image), tuple(image.scale)) for image in self.checked_unlabeled()]

    def _labeled(self, image_copy):
        """The labeled pairs with ``image_copy(layer)`` as image, and the pairs where nothing counts."""
        complete = self.complete.isChecked()
        labeled, problems = [], []
        for row in self.rows:
            image, labels = row.layers()
            if labels is None:
                continue
            if image is None:
                raise CVBMInputError(f"choose the image that '{labels.name}' labels")
            label = snapshot(labels)
            if layer_array(image).shape != label.shape:
                raise CVBMInputError(f"'{labels.name}' has shape {label.shape} but image '{image.name}' "
                                     f"has shape {layer_array(image).shape}: they must match")
            check_same_place(image.metadata.get(GEOMETRY), labels.metadata.get(GEOMETRY),
                             f"'{labels.name}' vs image '{image.name}'")
            slices = layer_counted_slices(labels, complete)
            if not len(slices):
                problems.append(f"'{labels.name}': {nothing_counted(labels)}")
                continue
            annotated = None if len(slices) == (1 if label.ndim < 3 else label.shape[0]) \
                else annotated_mask(label.shape, slices)
            labeled.append((labels.name, image_copy(image), label, annotated, tuple(image.scale)))
        if not labeled:
            raise CVBMInputError("no labeled data: " + ("; ".join(problems) if problems else
                                 "add a labeled pair (an image and a labels layer with some slices painted)"))
        return labeled, problems
