"""Compare fg/bg: the confidence maps of the two views side by side in napari's grid mode, and
back to the viewer as it was."""

from typing import Optional, Sequence

from .layers import CONFIDENCE, find_layer


def confidence_pair(viewer, sources: Sequence[str]) -> Optional[list]:
    """The (fg, bg) confidence layers of the first image name in ``sources`` that has both."""
    for source in sources:
        pair = [find_layer(viewer, source, CONFIDENCE[view]) for view in ("fg", "bg")]
        if None not in pair:
            return pair
    return None


class CompareView:
    """Shows two layers side by side and restores visibility, grid and overlays afterwards."""

    def __init__(self, viewer):
        self.viewer = viewer
        self._saved = None

    @property
    def shown(self) -> bool:
        return self._saved is not None

    def show(self, pair) -> None:
        """Only ``pair`` visible, in a 1x2 grid, each with its name top left and colour scale bottom right."""
        viewer, grid = self.viewer, self.viewer.canvas.grid
        self._saved = {
            "visible": {layer: layer.visible for layer in viewer.layers},
            "grid": (grid.enabled, grid.stride, grid.shape),
            "overlays": {layer: (layer.name_overlay.visible, layer.colorbar.visible, layer.colorbar.position)
                         for layer in pair},
        }
        for layer in viewer.layers:
            layer.visible = layer in pair
        for layer in pair:
            layer.name_overlay.visible = True
            layer.colorbar.update({"visible": True, "position": "bottom_right"})
        grid.stride, grid.shape, grid.enabled = 1, (1, 2), True
        viewer.reset_view()

    def restore(self) -> None:
        saved, self._saved = self._saved, None
        grid = self.viewer.canvas.grid
        grid.enabled, grid.stride, grid.shape = saved["grid"]
        for layer, (name_visible, colorbar_visible, colorbar_position) in saved["overlays"].items():
            layer.name_overlay.visible = name_visible
            layer.colorbar.update({"visible": colorbar_visible, "position": colorbar_position})
        for layer, visible in saved["visible"].items():
            if layer in self.viewer.layers:
                layer.visible = visible
        self.viewer.reset_view()
