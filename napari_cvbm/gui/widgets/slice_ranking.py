""""Slices to correct next": the slices of the last segmented image (the regions of a 2D one), most
uncertain first (spec 7).

The ranking comes from ``core.guidance.suggestions`` (fg confidence and fg/bg disagreement).
Clicking a row moves the viewer to that slice (or centres and zooms on that region) and selects the
segmentation to paint on; places corrected in the segmentation (``core.guidance.edited_places``
against the prediction kept in its ``metadata["cvbm_original"]``) leave the list. The panel only
displays and navigates.
"""

from typing import List, Optional, Sequence, Set, Tuple

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QLabel, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from ...core.guidance import Place, Region, edited_places
from ..jobs import Connections
from .training_data import PAINT_EVENTS, SUMMARY_DELAY_MS

EMPTY = "Segment an image to see which of its slices (or regions) the model is least sure of."
SCORE_TIP = ("uncertainty: the expected number of wrongly labelled voxels in the slice or region, from the "
             "fg confidence and the fg/bg disagreement")
REGION_MARGIN = 0.9  # a region shown after a click fills this share of the canvas


class SliceRankingPanel(QWidget):
    """A list of "slice z · uncertainty s" (or "rows …, columns … · uncertainty s") rows for one
    segmentation; a click jumps there."""

    def __init__(self, viewer, lifetime: Connections, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self._lifetime = lifetime
        self._image: Optional[Image] = None
        self._segmentation: Optional[Labels] = None
        self._ranking: List[Tuple[Place, float]] = []
        self._corrected: Set[Place] = set()
        self._timer = QTimer(self, singleShot=True, interval=SUMMARY_DELAY_MS)
        self._timer.timeout.connect(self.refresh)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.title = QLabel("<b>Slices to correct next</b>")
        layout.addWidget(self.title)
        self.info = QLabel(EMPTY, wordWrap=True)
        layout.addWidget(self.info)
        self.list = QListWidget()
        self.list.setMaximumHeight(150)
        self.list.setToolTip(SCORE_TIP)
        self.list.itemClicked.connect(self._on_item)
        self.list.itemActivated.connect(self._on_item)
        layout.addWidget(self.list)
        lifetime.connect(viewer.layers.events.removed, self._on_layer_removed)

    # -- filling ---------------------------------------------------------------------------------
    def show_ranking(self, image: Image, segmentation: Labels, ranking: Sequence[Tuple[Place, float]]) -> None:
        """Show ``ranking`` (``suggestions`` pairs, best first) for ``segmentation`` of ``image``."""
        self._unwatch()
        self._image, self._segmentation, self._ranking = image, segmentation, list(ranking)
        self.title.setText(f"<b>{self._kind().capitalize()} to correct next</b>")
        for name in PAINT_EVENTS:
            self._lifetime.connect(getattr(segmentation.events, name), self._schedule)
        self._corrected = set()
        self.refresh()

    def clear(self) -> None:
        """Forget the ranking (the image or its segmentation was closed)."""
        self._unwatch()
        self._image = self._segmentation = None
        self._ranking, self._corrected = [], set()
        self.list.clear()
        self.info.setText(EMPTY)

    def _unwatch(self) -> None:
        self._timer.stop()
        if self._segmentation is not None:
            for name in PAINT_EVENTS:
                self._lifetime.disconnect(getattr(self._segmentation.events, name))

    def _schedule(self, *_):
        self._timer.start()

    def _on_layer_removed(self, event):
        if any(event.value is layer for layer in (self._image, self._segmentation) if layer is not None):
            self.clear()

    def _kind(self) -> str:
        return "regions" if self._segmentation is not None and self._segmentation.ndim == 2 else "slices"

    def refresh(self) -> List[Place]:
        """Drop the places corrected so far from the list; the places shown, in order."""
        seg = self._segmentation
        if seg is None:
            return []
        try:
            self._corrected = set(edited_places(seg.data, seg.metadata["cvbm_original"]))
        except (KeyError, ValueError):  # the data was replaced by an array of another shape
            self._corrected = set()
        shown = [(place, score) for place, score in self._ranking if place not in self._corrected]
        if [place for place, _ in shown] != self.slices():
            scroll = self.list.verticalScrollBar().value()
            self.list.clear()
            for place, score in shown:
                where = str(place) if isinstance(place, Region) else f"slice {place}"
                item = QListWidgetItem(f"{where} · uncertainty {score:.0f}")
                item.setData(Qt.UserRole, place)
                self.list.addItem(item)
            self.list.verticalScrollBar().setValue(scroll)
        kind = self._kind()
        corrected = f"; {len(self._corrected)} corrected" if self._corrected else ""
        self.info.setText(
            f"'{self._image.name}': {len(shown)} {kind if len(shown) != 1 else kind[:-1]}, least sure "
            f"first{corrected}. Click one to go "
            "there and correct it." if shown else f"'{self._image.name}': every {kind[:-1]} is corrected.")
        return self.slices()

    def slices(self) -> List[Place]:
        """The places (slices, or regions of a 2D image) listed, in order."""
        return [self.list.item(i).data(Qt.UserRole) for i in range(self.list.count())]

    # -- navigating ------------------------------------------------------------------------------
    def _on_item(self, item: QListWidgetItem):
        self.jump(item.data(Qt.UserRole))

    def jump(self, z: Place) -> None:
        """Show slice ``z`` (axis 0 of the segmentation), or centre and zoom on a region of a 2D one,
        and select the segmentation for painting."""
        seg = self._segmentation
        if seg is None:
            return
        if isinstance(z, Region):
            corners = seg.data_to_world([z.y0, z.x0]), seg.data_to_world([z.y1, z.x1])
            size = np.abs(np.subtract(*corners))
            self.viewer.scene.camera.center = tuple(np.add(*corners) / 2)
            self.viewer.scene.camera.zoom = REGION_MARGIN * float(np.min(np.asarray(self.viewer.canvas.size) / size))
        elif seg.ndim >= 3:
            axis = self.viewer.dims.ndim - seg.ndim  # the world axis of the layer's axis 0
            position = [int(z)] + [0] * (seg.ndim - 1)
            self.viewer.dims.set_point(axis, float(seg.data_to_world(position)[0]))
        seg.visible = True
        self.viewer.layers.selection.active = seg
