"""Segment widget in a real napari viewer: layers, re-runs, compare mode, model changes, bad input."""

import numpy as np
import pytest
import torch
from napari.utils.notifications import NotificationSeverity

from napari_cvbm.core.checkpoint import build_model, save_model
from napari_cvbm.core.config import preset
from napari_cvbm.core.io import read_image, read_labels
from napari_cvbm.gui import models
from napari_cvbm.gui.layers import ROLES
from napari_cvbm.synthetic import SAMPLE_DATA

SAMPLE = SAMPLE_DATA / "labeled"
TIMEOUT_MS = 60_000


def tiny_checkpoint(path, seed=0):
    """A randomly initialised width-4 3D model saved as a checkpoint."""
    torch.manual_seed(seed)
    config = preset("cpu", 3, width=4, patch_size=(32, 48, 48))
    return save_model(path, build_model(config), config)


@pytest.fixture
def tiny_widget(viewer_widget, tmp_path):
    """Viewer and widget with a tiny random model active (fast, independent of the starter)."""
    viewer, widget = viewer_widget
    assert widget.load_checkpoint(tiny_checkpoint(tmp_path / "tiny.pt")) == "file: tiny.pt"
    return viewer, widget


def errors(seen):
    return [n.message for n in seen if n.severity == NotificationSeverity.ERROR]


def add_sample(viewer):
    image = read_image(SAMPLE / "images" / "case_001.nii.gz")
    return viewer.add_image(image.array, name="case_001", scale=image.spacing)


def segment(qtbot, widget, layer=None):
    worker = widget.segment(layer)
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    return worker


def made_layers(viewer, source="case_001"):
    return {layer.metadata["cvbm_role"]: layer for layer in viewer.layers
            if layer.metadata.get("cvbm_source") == source}


def check_layers(layers, image):
    assert set(layers) == set(ROLES)
    for role, layer in layers.items():
        assert layer.metadata["cvbm_role"] == role
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
        assert layer.data.shape == image.data.shape
    seg = layers["segmentation"]
    assert seg.name.startswith("case_001 CVBM segmentation")  # napari adds " [1]" to a taken name
    assert set(np.unique(seg.data)) <= {0, 1}
    np.testing.assert_array_equal(seg.metadata["cvbm_original"], seg.data)
    assert seg.metadata["cvbm_original"] is not seg.data
    for view in ("fg", "bg", "mix"):
        prob = layers[f"prob_{view}_view"]
        assert prob.name == f"case_001 P(fg) {view} view"
        assert 0.0 <= prob.data.min() and prob.data.max() <= 1.0
        assert prob.visible == (view == "fg")
    fg_conf, bg_conf = layers["confidence_fg"], layers["confidence_bg"]
    for conf in (fg_conf, bg_conf):
        assert conf.data.min() >= 0.5 - 1e-6 and conf.data.max() <= 1.0 + 1e-6
    assert fg_conf.colormap.name == bg_conf.colormap.name
    assert tuple(fg_conf.contrast_limits) == tuple(bg_conf.contrast_limits) == (0.5, 1.0)
    dis = layers["disagreement"]
    assert not dis.visible and 0.0 <= dis.data.min() and dis.data.max() <= 1.0


def test_starter_model_segments_the_sample(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    image = add_sample(viewer)
    assert widget._image.value is image
    assert "3D V-Net" in widget.model_panel.info.value
    segment(qtbot, widget)
    layers = made_layers(viewer)
    check_layers(layers, image)
    truth = read_labels(SAMPLE / "labels" / "case_001.nii.gz").array > 0
    pred = layers["segmentation"].data > 0
    dice = 2 * np.sum(pred & truth) / (pred.sum() + truth.sum())
    assert dice > 0.7, dice


def test_rerun_replaces_own_layers_and_keeps_the_users(tiny_widget, qtbot, notifications):
    viewer, widget = tiny_widget
    image = add_sample(viewer)
    user = viewer.add_labels(np.ones(image.data.shape, np.uint8), name="case_001 CVBM segmentation",
                             scale=image.scale)
    segment(qtbot, widget)
    first = made_layers(viewer)
    check_layers(first, image)
    assert widget._image.choices == (image,)  # the maps it made are not offered for segmenting
    count = len(viewer.layers)
    assert count == 2 + len(ROLES)

    assert widget.segment() is not None
    assert not widget._segment_button.isEnabled()
    assert widget.segment() is None  # refused while running
    assert any("already running" in n.message for n in notifications)
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    assert len(viewer.layers) == count
    assert made_layers(viewer) == first  # same layer objects, updated in place
    assert user in viewer.layers and user.name == "case_001 CVBM segmentation"
    assert np.all(user.data == 1) and "cvbm_role" not in user.metadata
    assert not errors(notifications)


def test_compare_mode_shows_confidences_side_by_side_and_restores(tiny_widget, qtbot):
    viewer, widget = tiny_widget
    add_sample(viewer)
    segment(qtbot, widget)
    before = {layer.name: layer.visible for layer in viewer.layers}
    grid_before = (viewer.canvas.grid.enabled, viewer.canvas.grid.stride, viewer.canvas.grid.shape)

    assert widget.set_compare(True)
    layers = made_layers(viewer)
    shown = [layer for layer in viewer.layers if layer.visible]
    assert shown == [layers["confidence_fg"], layers["confidence_bg"]]
    assert viewer.canvas.grid.enabled and viewer.canvas.grid.actual_shape(viewer.layers) == (1, 2)
    assert widget._compare_button.isChecked()
    assert layers["confidence_fg"].colorbar.visible and layers["confidence_bg"].name_overlay.visible

    assert not widget.set_compare(False)
    assert {layer.name: layer.visible for layer in viewer.layers} == before
    assert (viewer.canvas.grid.enabled, viewer.canvas.grid.stride, viewer.canvas.grid.shape) == grid_before
    assert not widget._compare_button.isChecked()
    assert not layers["confidence_fg"].colorbar.visible and not layers["confidence_bg"].name_overlay.visible


def test_compare_before_segmenting_warns(viewer_widget, notifications):
    viewer, widget = viewer_widget
    assert not widget.set_compare(True)
    assert not viewer.canvas.grid.enabled and not widget._compare_button.isChecked()
    assert any("Nothing to compare" in n.message for n in notifications)


def test_model_change_resegments_the_last_image(tiny_widget, qtbot, tmp_path, store):
    viewer, widget = tiny_widget
    add_sample(viewer)
    first = segment(qtbot, widget)
    prob = made_layers(viewer)["prob_fg_view"]
    before = prob.data.copy()
    assert widget.set_compare(True)

    name = widget.load_checkpoint(tiny_checkpoint(tmp_path / "other.pt", seed=1))
    assert store.active == name and widget.model_panel.choice.value == name
    assert widget.runner.worker is not first
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    assert made_layers(viewer)["prob_fg_view"] is prob
    assert not np.allclose(prob.data, before)
    assert viewer.canvas.grid.enabled and len([layer for layer in viewer.layers if layer.visible]) == 2


def test_unreadable_checkpoint_is_an_error_notification(viewer_widget, tmp_path, notifications, store):
    _, widget = viewer_widget
    before = store.names()
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    assert widget.load_checkpoint(bad) is None
    assert any("broken.pt" in message for message in errors(notifications))
    assert store.names() == before and before[0] == models.STARTER  # the starter and any bundled models


def test_bad_images_are_refused_with_notifications(tiny_widget, qtbot, notifications):
    viewer, widget = tiny_widget
    flat = viewer.add_image(np.random.default_rng(0).random((64, 64), np.float32), name="slice")
    segment(qtbot, widget, flat)
    assert any("3D model" in message for message in errors(notifications)), widget.status.message

    rgb = viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="photo", rgb=True)
    assert widget.segment(rgb) is None  # a grey-level model: the engine's channel check, before any work
    assert any("expects 1 channel; 'photo' has 3 channels" in message for message in errors(notifications))
    assert not made_layers(viewer, "slice") and widget._segment_button.isEnabled()


def expected_order(layers, apart=2):
    """Slices by the sum of min(1, (1 - fg confidence) + disagreement), from the layers shown: first
    those at least ``apart`` from every better one (a 3D model at the image's own spacing: 2), then
    the others."""
    wrong = np.minimum(1.0, 1.0 - layers["confidence_fg"].data + layers["disagreement"].data)
    order = np.argsort(-wrong.reshape(wrong.shape[0], -1).sum(1, dtype=np.float64), kind="stable")
    first = []
    for z in order:
        if all(abs(z - t) >= apart for t in first):
            first.append(z)
    return first + [z for z in order if z not in first]


def test_slices_to_correct_next_jump_and_leave_when_corrected(tiny_widget, qtbot):
    viewer, widget = tiny_widget
    panel = widget.ranking
    image = add_sample(viewer)
    assert panel.slices() == [] and "Segment an image" in panel.info.text()
    segment(qtbot, widget)
    layers = made_layers(viewer)
    seg = layers["segmentation"]
    shown = panel.slices()
    assert shown == expected_order(layers) and sorted(shown) == list(range(image.data.shape[0]))
    rows = [panel.list.item(i).text() for i in range(panel.list.count())]
    assert rows[0] == f"slice {shown[0]} · uncertainty {float(rows[0].split()[-1]):.0f}"
    scores = [float(row.split()[-1]) for row in rows]
    assert scores[0] == max(scores) and scores[0] > scores[-1]

    viewer.layers.selection.active = image
    target = shown[1] if shown[1] != viewer.dims.current_step[0] else shown[2]
    panel.list.itemClicked.emit(panel.list.item(shown.index(target)))
    assert viewer.dims.current_step[0] == target
    assert viewer.layers.selection.active is seg

    seg.paint((target, 40, 40), 2)  # correct the slice shown
    qtbot.waitUntil(lambda: target not in panel.slices(), timeout=5_000)
    assert panel.slices() == [z for z in shown if z != target]
    assert "1 corrected" in panel.info.text()

    panel.jump(shown[0])
    assert viewer.dims.current_step[0] == shown[0]
    viewer.layers.remove(image)  # closing the image clears the list
    assert panel.slices() == [] and "Segment an image" in panel.info.text()
