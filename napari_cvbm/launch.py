"""Open napari with the CVBM widgets docked and the sample data loaded (the README's main job)."""


def open_viewer(load_samples: bool = True):
    """A napari viewer with both CVBM widgets docked and, optionally, the two sample volumes."""
    import napari

    viewer = napari.Viewer(title="napari-cvbm")
    if load_samples:
        viewer.open_sample("napari-cvbm", "labeled")
        viewer.open_sample("napari-cvbm", "unlabeled")
    viewer.window.add_plugin_dock_widget("napari-cvbm", "Segment")
    viewer.window.add_plugin_dock_widget("napari-cvbm", "Fine-tune with unlabeled data")
    return viewer


def main() -> int:
    import napari

    open_viewer()
    napari.run()
    return 0
