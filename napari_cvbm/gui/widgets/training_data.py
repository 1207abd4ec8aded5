"""The Fine-tune widget's training data: labeled (image, labels) layer pairs and unlabeled image
layers, or folders on disk (labeled images, labels, unlabeled images and field-of-view masks
matched by file name; 4D images read as their first volume or with all volumes as channels).

An image is a grey or RGB layer or, when the model fine-tuned takes several channels, one layer per
channel (``widgets.channel_picker``). Each pair and each unlabeled image may have a field of view: a
labels or image layer of its shape, non-zero inside; pixels outside are neither supervised nor
pseudo-labelled. A layer chosen as a field of view is no labeled pair nor unlabeled image. An
unlabeled image is ticked when first listed unless it is paired or of another kind (RGB or not)
than the paired images.

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
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..._reader import GEOMETRY
from ...core.annotation import annotated_mask, counted_slices, format_slices
from ...core.data import Case
from ...core.errors import CVBMInputError
from ...core.geometry import check_same_place
from ..jobs import Connections
from ..snapshots import (
    ImageInput,
    field_of_view,
    image_input,
    image_of,
    label_layers,
    layer_array,
    snapshot,
    source_images,
    spatial_shape,
)
from ..workers import Folders
from .channel_picker import ChannelPicker, channel_layers, compact, layer_choices, refresh_choices

SOURCE_LAYERS, SOURCE_FOLDERS = "Layers in the viewer", "Folders on disk"
SUMMARY_DELAY_MS = 150  # recount annotated slices once painting pauses
PAINT_EVENTS = ("data", "paint", "labels_update")
WHOLE_IMAGE = "whole image"  # no field of view
OUTSIDE = "pixels outside are neither trained on nor pseudo-labelled"
FOV_TIP = f"field of view (optional): a labels or image layer of the image's shape, non-zero inside; {OUTSIDE}"
FOLDERS = {"images": ("Labeled images", "folder"), "labels": ("Labels", "folder"),
           "unlabeled": ("Unlabeled images", "folder (optional)"), "fov": ("Field of view", "folder (optional)")}
FOLDER_FOV_TIP = f"masks named as the images (labeled and unlabeled), non-zero inside; {OUTSIDE}"
VOLUMES = {"first volume": False, "all volumes as channels": True}  # how 4D images are read: all_volumes
VOLUMES_TIP = ("images with several volumes (a 4D NIfTI's 4th axis, a TIFF's channels or frames): train on "
               "the first one, or on all of them as the network's input channels (e.g. MRI sequences)")


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
    if spatial_shape(image) != data.shape:
        return f"{labels.name}: shape {data.shape} does not match image '{image.name}' {spatial_shape(image)}"
    slices = layer_counted_slices(labels, complete)
    total = 1 if data.ndim < 3 else data.shape[0]
    if not len(slices):
        return f"{labels.name}: {nothing_counted(labels)}"
    if data.ndim < 3:
        return f"{labels.name}: the whole image counts as labeled"
    return f"{labels.name}: slices {format_slices(slices)} count as labeled ({len(slices)} of {total})"


def fov_picker(viewer) -> ComboBox:
    """A picker of a field of view: a labels or image layer, or none."""
    combo = ComboBox(nullable=True, tooltip=FOV_TIP)
    combo.null_string = WHOLE_IMAGE  # before the first choices: listed first
    combo.choices = layer_choices(lambda: label_layers(viewer) + source_images(viewer))
    return compact(combo)


class PairRow(QWidget):
    """One labeled pair: its image (``ChannelPicker``), its labels layer, an optional field of view
    and a remove button."""

    def __init__(self, viewer, labels: Optional[Labels] = None, image: Optional[Image] = None,
                 channels: Tuple[str, ...] = ()):
        super().__init__()
        self.picker = ChannelPicker(viewer, label="", nullable=True)
        self.picker.set_channels(channels)
        self.image = self.picker.image
        self.labels = ComboBox(choices=layer_choices(lambda: label_layers(viewer)), nullable=True,
                               tooltip="its labels layer")
        compact(self.labels)
        self.fov = fov_picker(viewer)
        self.image.value, self.labels.value = image, labels
        self.remove = QToolButton(text="✕", toolTip="Remove this pair")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.picker.native, 1)
        for combo in (self.labels, self.fov):
            layout.addWidget(combo.native, 1, Qt.AlignTop)
        layout.addWidget(self.remove, 0, Qt.AlignTop)

    def reset_choices(self):
        """Offer the current layers; the chosen ones stay chosen (by identity, so renames are fine)."""
        self.picker.refresh()
        for combo in (self.labels, self.fov):
            refresh_choices(combo)

    def layers(self) -> Tuple[Optional[Image], Optional[Labels]]:
        return self.image.value, self.labels.value


class TrainingDataPanel(QWidget):
    """Where the labeled and unlabeled data come from, which slices count, and their snapshot."""

    changed = Signal()  # pairs, labels, ticked unlabeled images or the source changed

    def __init__(self, viewer, lifetime: Connections, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.rows: List[PairRow] = []
        self.channels: Tuple[str, ...] = ()  # of the model fine-tuned (() for one channel)
        self._unlabeled_fov: List[ComboBox] = []  # each unlabeled image's field-of-view picker
        self._lifetime = lifetime
        self._relist = QTimer(self, singleShot=True, interval=0)  # a field of view was chosen
        self._relist.timeout.connect(self.reset_choices)
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
        layout.addWidget(QLabel("Labeled pairs (image ← labels, field of view):"))
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
        self.unlabeled = QTableWidget(0, 2)
        self.unlabeled.setHorizontalHeaderLabels(["Unlabeled images", "Field of view"])
        self.unlabeled.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.unlabeled.verticalHeader().hide()
        self.unlabeled.setSelectionMode(QAbstractItemView.NoSelection)
        self.unlabeled.setMaximumHeight(140)
        self.unlabeled.itemChanged.connect(self.changed)
        layout.addWidget(self.unlabeled)
        return page

    def _folders_page(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        self.folders: Dict[str, QLineEdit] = {}
        for key, (text, placeholder) in FOLDERS.items():
            self.folders[key] = QLineEdit(placeholderText=placeholder)
            self.folders[key].textChanged.connect(self.changed)
            browse = QToolButton(text="…")
            browse.clicked.connect(partial(self._browse_folder, self.folders[key]))
            row = QHBoxLayout()
            row.addWidget(self.folders[key])
            row.addWidget(browse)
            form.addRow(text, row)
        self.folders["fov"].setToolTip(FOLDER_FOV_TIP)
        self.volumes = QComboBox(toolTip=VOLUMES_TIP)
        self.volumes.addItems(list(VOLUMES))
        self.volumes.currentIndexChanged.connect(self.changed)
        form.addRow("4D images", self.volumes)
        form.addRow(QLabel("Label files count on every slice; labels and masks are matched to images by file "
                           "name.", wordWrap=True))
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
        kinds = {r.image.value.rgb for r in self.rows if r.image.value is not None}  # RGB or not
        kept = {id(item.data(Qt.UserRole)): (item.checkState(), combo.value) for item, combo in self._unlabeled_rows()}
        fovs = self._fov_layers()
        self.unlabeled.setRowCount(0)
        self._unlabeled_fov = []
        for image in self._unlabeled_choices():
            if id(image) in fovs:
                continue
            ticked = id(image) not in paired and (not kinds or image.rgb in kinds)  # when first listed
            checked, fov = kept.get(id(image), (Qt.Checked if ticked else Qt.Unchecked, None))
            item = QTableWidgetItem(image.name)
            item.setData(Qt.UserRole, image)
            item.setFlags((item.flags() | Qt.ItemIsUserCheckable) & ~Qt.ItemIsEditable)
            item.setCheckState(checked)
            combo = fov_picker(self.viewer)
            if any(layer is fov for layer in combo.choices if layer is not None):
                combo.value = fov
            combo.changed.connect(partial(self._fov_chosen, None))
            row = self.unlabeled.rowCount()
            self.unlabeled.insertRow(row)
            self.unlabeled.setItem(row, 0, item)
            self.unlabeled.setCellWidget(row, 1, combo.native)
            self._unlabeled_fov.append(combo)
        self._schedule_summary()

    def set_channels(self, names: Tuple[str, ...]) -> None:
        """Read images as a model of channels ``names`` takes them (() for one channel)."""
        names = tuple(names)
        if names != self.channels:
            self.channels = names
            for row in self.rows:
                row.picker.set_channels(names)
            self.reset_choices()

    def _unlabeled_choices(self) -> List[Image]:
        """The images that can be unlabeled data: for a model of several channels, those whose channel
        layers are all found by name (``channel_picker.case_channels``) and RGB ones."""
        images = source_images(self.viewer)
        return [image for image in images
                if all(layer is not None for layer in channel_layers(image, self.channels, images))]

    def _fov_layers(self) -> set:
        """The ids of the layers chosen as a field of view."""
        pickers = [row.fov for row in self.rows] + self._unlabeled_fov
        return {id(combo.value) for combo in pickers if combo.value is not None}

    def _fov_chosen(self, row: Optional[PairRow], layer):
        """A layer chosen as a field of view is no labeled pair nor unlabeled image."""
        for other in [r for r in self.rows if layer is not None and r is not row and r.labels.value is layer]:
            self._remove_pair(other)
        self._relist.start()
        self._schedule_summary()

    def add_pair(self, labels: Optional[Labels] = None, image: Optional[Image] = None) -> PairRow:
        """Add a labeled-pair row; by default a labels layer is paired with its source image."""
        if labels is not None and image is None:
            image = image_of(self.viewer, labels)
        row = PairRow(self.viewer, labels, image, self.channels)
        row.remove.clicked.connect(partial(self._remove_pair, row))
        for widget in (row.picker, row.labels):
            widget.changed.connect(self._schedule_summary)
        row.fov.changed.connect(partial(self._fov_chosen, row))
        self.rows.append(row)
        self.rows_box.addWidget(row)
        self._schedule_summary()
        return row

    def _remove_pair(self, row: PairRow):
        self.rows.remove(row)
        row.setParent(None)
        row.deleteLater()
        self._schedule_summary()

    def _unlabeled_rows(self) -> List[Tuple[QTableWidgetItem, ComboBox]]:
        """(image item, field-of-view picker) of each unlabeled image listed."""
        return [(self.unlabeled.item(i, 0), self._unlabeled_fov[i]) for i in range(self.unlabeled.rowCount())]

    def _unlabeled_items(self) -> List[QTableWidgetItem]:
        return [item for item, _ in self._unlabeled_rows()]

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

    def typed_folders(self) -> Folders:
        """The folders as typed in and how 4D images are read."""
        return Folders(**{k: f.text().strip() for k, f in self.folders.items()},
                       all_volumes=VOLUMES[self.volumes.currentText()])

    def chosen_folders(self) -> Folders:
        """:meth:`typed_folders`, checked by file name (``Folders.check``); raises CVBMInputError without
        the labeled images and their labels, for a missing folder or an image without its label file."""
        folders = self.typed_folders()
        if not folders.images or not folders.labels:
            raise CVBMInputError("choose the folders of the labeled images and of their labels")
        folders.check()
        return folders

    def snapshot(self) -> Tuple[List[Case], List[Case]]:
        """Copies of the labeled pairs and of the ticked unlabeled images, as ``Case``s of the layers'
        own data (not normalised; labeled ones with their annotated mask); raises CVBMInputError when
        nothing counts."""
        labeled, problems = self._labeled(stand_in=False)
        for problem in problems:
            show_warning(f"{problem} — not used")
        return labeled, self._unlabeled(stand_in=False)

    def plan_snapshot(self) -> Tuple[List[Case], List[Case]]:
        """What a plan reads, as :meth:`snapshot` but with each image a stand-in of its shape (no
        copy; the planner reads no intensities) and without warnings."""
        return self._labeled(stand_in=True)[0], self._unlabeled(stand_in=True)

    def _unlabeled(self, stand_in: bool) -> List[Case]:
        cases = []
        for item, fov in self._unlabeled_rows():
            image = item.data(Qt.UserRole)
            if item.checkState() == Qt.Checked:
                read = image_input(channel_layers(image, self.channels, source_images(self.viewer)), self.channels,
                                   stand_in)
                cases.append(_case(image.name, read, field_of_view(fov.value, image)))
        return cases

    def _labeled(self, stand_in: bool):
        """The labeled pairs as ``Case``s (images read by :func:`image_input` with ``stand_in``), and
        the pairs where nothing counts."""
        complete = self.complete.isChecked()
        labeled, problems = [], []
        for row in self.rows:
            image, labels = row.layers()
            if labels is None:
                continue
            if image is None:
                raise CVBMInputError(f"choose the image that '{labels.name}' labels")
            label = snapshot(labels)
            if spatial_shape(image) != label.shape:
                raise CVBMInputError(f"'{labels.name}' has shape {label.shape} but image '{image.name}' "
                                     f"has shape {spatial_shape(image)}: they must match")
            check_same_place(image.metadata.get(GEOMETRY), labels.metadata.get(GEOMETRY),
                             f"'{labels.name}' vs image '{image.name}'")
            slices = layer_counted_slices(labels, complete)
            if not len(slices):
                problems.append(f"'{labels.name}': {nothing_counted(labels)}")
                continue
            annotated = None if len(slices) == (1 if label.ndim < 3 else label.shape[0]) \
                else annotated_mask(label.shape, slices)
            labeled.append(_case(labels.name, row.picker.read(stand_in), field_of_view(row.fov.value, image),
                                 label, annotated))
        if not labeled:
            raise CVBMInputError("no labeled data: " + ("; ".join(problems) if problems else
                                 "add a labeled pair (an image and a labels layer with some slices painted)"))
        return labeled, problems


def _case(name: str, image: ImageInput, valid, label=None, annotated=None) -> Case:
    """A ``Case`` of the image as read, not normalised (``make_case`` does that in the worker)."""
    return Case(name, image.array, label, annotated, image.spacing, valid, image.channel_names)
