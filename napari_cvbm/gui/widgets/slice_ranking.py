""""Slices to correct next": the slices of the last segmented image, most uncertain first (spec 7).

The ranking comes from ``core.guidance.rank_slices`` (fg confidence and fg/bg disagreement).
Clicking a row moves the viewer to that slice and selects the segmentation to paint on; slices
corrected in the segmentation (``core.annotation.edited_slices`` against the prediction kept in
its ``metadata["cvbm_original"]``) leave the list. The panel only displays and navigates.
"""

from typing import List, Optional, Sequence, Set, Tuple

from napari.layers import Image, Labels
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QLabel, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from ...core.annotation import edited_slices
from ..jobs import Connections
from .training_data import PAINT_EVENTS, SUMMARY_DELAY_MS

EMPTY = "Segment an image to see which of its slices the model is least sure of."
SCORE_TIP = ("uncertainty: the expected number of wrongly labelled voxels in the slice, from the fg "
             "confidence and the fg/bg disagreement")


class SliceRankingPanel(QWidget):
    """A list of "slice z · uncertainty s" rows for one segmentation; a click jumps to the slice."""

    def __init__(self, viewer, lifetime: Connections, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self._lifetime = lifetime
        self._image: Optional[Image] = None
        self._segmentation: Optional[Labels] = None
        self._ranking: List[Tuple[int, float]] = []
        self._corrected: Set[int] = set()
        self._timer = QTimer(self, singleShot=True, interval=SUMMARY_DELAY_MS)
        self._timer.timeout.connect(self.refresh)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("<b>Slices to correct next</b>"))
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
    def show_ranking(self, image: Image, segmentation: Labels, ranking: Sequence[Tuple[int, float]]) -> None:
        """Show ``ranking`` (``rank_slices`` pairs, best first) for ``segmentation`` of ``image``."""
        self._unwatch()
        self._image, self._segmentation, self._ranking = image, segmentation, list(ranking)
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

    def refresh(self) -> List[int]:
        """Drop the slices corrected so far from the list; the slices shown, in order."""
        seg = self._segmentation
        if seg is None:
            return []
        try:
            self._corrected = set(edited_slices(seg.data, seg.metadata["cvbm_original"]).tolist())
        except (KeyError, ValueError):  # the data was replaced by an array of another shape
            self._corrected = set()
        shown = [(z, score) for z, score in self._ranking if z not in self._corrected]
        if [z for z, _ in shown] != self.slices():
            scroll = self.list.verticalScrollBar().value()
            self.list.clear()
            for z, score in shown:
                item = QListWidgetItem(f"slice {z} · uncertainty {score:.0f}")
                item.setData(Qt.UserRole, z)
                self.list.addItem(item)
            self.list.verticalScrollBar().setValue(scroll)
        corrected = f"; {len(self._corrected)} corrected" if self._corrected else ""
        self.info.setText(
            f"'{self._image.name}': {len(shown)} slices, least sure first{corrected}. Click one to go "
            "there and correct it." if shown else f"'{self._image.name}': every slice is corrected.")
        return self.slices()

    def slices(self) -> List[int]:
        """The slices listed, in order."""
        return [self.list.item(i).data(Qt.UserRole) for i in range(self.list.count())]

    # -- navigating ------------------------------------------------------------------------------
    def _on_item(self, item: QListWidgetItem):
        self.jump(item.data(Qt.UserRole))

    def jump(self, z: int) -> None:
        """Show slice ``z`` (axis 0 of the segmentation) and select the segmentation for painting."""
        seg = self._segmentation
        if seg is None:
            return
        if seg.ndim >= 3:
            axis = self.viewer.dims.ndim - seg.ndim  # the world axis of the layer's axis 0
            position = [int(z)] + [0] * (seg.ndim - 1)
            self.viewer.dims.set_point(axis, float(seg.data_to_world(position)[0]))
        seg.visible = True
        self.viewer.layers.selection.active = seg
