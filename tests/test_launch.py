"""The README's main job with a display: napari with both widgets docked and the sample data."""


def test_gui_main_job_opens_widgets_and_samples(qtbot, monkeypatch):
    import napari

    from napari_cvbm import launch

    seen = {}

    def run_instead():  # `cvbm gui` would block in napari.run(); look at the window, then close it
        viewer = napari.current_viewer()
        seen["layers"] = [layer.name for layer in viewer.layers]
        seen["docked"] = set(viewer.window.dock_widgets)
        viewer.close()

    monkeypatch.setattr(napari, "run", run_instead)
    assert launch.main() == 0
    assert seen["layers"] == ["case_001", "case_001 label", "case_004 (unlabeled)"]
    assert {"Segment (napari-cvbm)", "Fine-tune with unlabeled data (napari-cvbm)"} <= seen["docked"]
