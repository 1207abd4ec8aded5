"""Colour and multi-channel images in the widgets, in a real napari viewer: an RGB layer segmented on
the photo, a grey model refusing it, a 2-channel model reading two aligned layers (and refusing
misaligned ones), a fine-tune on an RGB photo with a field of view, and channel layers as training data."""

import numpy as np
import pytest
import torch
from napari.utils.notifications import NotificationSeverity

from napari_cvbm.core.channels import RGB
from napari_cvbm.core.checkpoint import build_model, save_model
from napari_cvbm.core.config import preset
from napari_cvbm.core.predictor import Predictor
from napari_cvbm.gui.layers import ROLES
from napari_cvbm.gui.widgets.training_settings import PLANNED, PRESETS, START_ACTIVE, START_NEW_2D

TIMEOUT_MS = 120_000
CPU_PRESET = next(name for name, key in PRESETS.items() if key == "cpu")
T1T2 = ("t1", "t2")


def photo(seed=0, shape=(48, 64)):
    """A fundus-like RGB photograph (uint8, channels last): dark lines (vessels) on a reddish disc, black
    outside; with its vessel labels and the disc (its field of view)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:shape[0], :shape[1]]
    disc = (y - shape[0] / 2) ** 2 + (x - shape[1] / 2) ** 2 < (0.45 * min(shape)) ** 2
    vessels = ((np.abs(y - 0.5 * x - rng.uniform(5, 15)) < 1.5) | (np.abs(x - rng.uniform(20, 40)) < 1.5)) & disc
    colour = np.where(vessels[..., None], (90, 30, 20), (200, 90, 50)) + rng.normal(0, 12, (*shape, 3))
    image = np.where(disc[..., None], colour, 0).clip(0, 255).astype(np.uint8)
    return image, vessels.astype(np.uint8), disc


def checkpoint(path, names=RGB, seed=0):
    """A randomly initialised width-4 2D model of channels ``names`` (() for one), as a checkpoint."""
    torch.manual_seed(seed)
    config = preset("cpu", 2, width=4, patch_size=(32, 32), slice_size=None, in_channels=max(1, len(names)),
                    channel_names=tuple(names) or None)
    return save_model(path, build_model(config), config)


def segment(qtbot, widget):
    assert widget.segment() is not None, widget.status.message
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


def made_layers(viewer, source):
    return {layer.metadata["cvbm_role"]: layer for layer in viewer.layers
            if layer.metadata.get("cvbm_source") == source}


def errors(seen):
    return [str(n.message) for n in seen if n.severity == NotificationSeverity.ERROR]


def engine_fg(store, image, spacing, channels):
    """P(foreground) of the fg view of the active model, called as the engine is meant to be."""
    return 1.0 - Predictor(*store.get())(image, spacing=spacing, channels=channels, mode="fg").fg[0]


def test_rgb_layer_is_segmented_on_the_photo(viewer_widget, qtbot, tmp_path, store, notifications):
    viewer, widget = viewer_widget
    assert widget.load_checkpoint(checkpoint(tmp_path / "rgb.pt"))
    rgb, _, _ = photo()
    layer = viewer.add_image(rgb, name="fundus", rgb=True, scale=(0.5, 0.25), translate=(3.0, 4.0))
    assert widget._image.value is layer and widget.picker.layers() == [layer]  # an RGB layer: its own channels
    assert all(combo.native.isHidden() for combo in widget.picker.extra)
    segment(qtbot, widget)
    assert not errors(notifications), widget.status.message
    made = made_layers(viewer, "fundus")
    assert set(made) == set(ROLES)
    for role, result in made.items():
        assert result.data.shape == (48, 64), role
        np.testing.assert_allclose(result.scale, (0.5, 0.25))
        np.testing.assert_allclose(result.translate, (3.0, 4.0))
        np.testing.assert_allclose(result.data_to_world((47, 63)), layer.data_to_world((47, 63)))  # same place
    channels_first = np.moveaxis(rgb, -1, 0).astype(np.float32)
    expected = engine_fg(store, channels_first, (0.5, 0.25), RGB)
    np.testing.assert_allclose(made["prob_fg_view"].data, expected, atol=1e-5)
    swapped = engine_fg(store, channels_first[::-1].copy(), (0.5, 0.25), RGB)  # blue, green, red
    assert not np.allclose(made["prob_fg_view"].data, swapped, atol=1e-3)  # the channel order shows


def test_grey_model_refuses_an_rgb_layer_in_one_line(viewer_widget, tmp_path, notifications):
    viewer, widget = viewer_widget
    widget.load_checkpoint(checkpoint(tmp_path / "grey.pt", names=()))
    viewer.add_image(photo()[0], name="fundus", rgb=True)
    assert widget.segment() is None
    (message,) = errors(notifications)
    assert message.startswith("the model expects 1 channel; 'fundus' has 3 channels (red, green, blue)")
    assert "\n" not in message and widget.status.message == f"Not segmented: {message}"
    assert not made_layers(viewer, "fundus") and widget._segment_button.isEnabled()


@pytest.fixture
def two_channel(viewer_widget, tmp_path):
    """Viewer and widget with a 2-channel (t1, t2) model active, and the channels of case "a" as the
    reader opens a 2-channel file (channel_axis=0, "<case> <channel>")."""
    viewer, widget = viewer_widget
    widget.load_checkpoint(checkpoint(tmp_path / "t1t2.pt", names=T1T2))
    stack = np.random.default_rng(1).random((2, 40, 48), np.float32)
    stack[1] = stack[1] ** 3
    viewer.add_image(stack, channel_axis=0, name=["a t1", "a t2"], scale=(2.0, 1.5))
    return viewer, widget, stack


def test_two_channel_model_reads_the_chosen_layers(two_channel, qtbot, store):
    viewer, widget, stack = two_channel
    t1, t2 = viewer.layers["a t1"], viewer.layers["a t2"]
    (picker,) = widget.picker.extra
    assert widget._image.value is t1 and picker.value is t2  # preset by name
    assert widget._image.label == "Image (t1)" and picker.label == "t2" and not picker.native.isHidden()
    other = viewer.add_image(stack[::-1].copy(), channel_axis=0, name=["b t1", "b t2"], scale=(2.0, 1.5))
    widget._image.value = other[0]
    assert picker.value is other[1]  # follows the image
    widget._image.value = t1
    segment(qtbot, widget)
    made = made_layers(viewer, "a t1")
    assert made["segmentation"].data.shape == (40, 48)
    np.testing.assert_allclose(made["segmentation"].scale, (2.0, 1.5))
    np.testing.assert_allclose(made["prob_fg_view"].data, engine_fg(store, stack, (2.0, 1.5), T1T2), atol=1e-5)
    assert not np.allclose(made["prob_fg_view"].data, engine_fg(store, stack[::-1].copy(), (2.0, 1.5), T1T2),
                           atol=1e-3)


def test_misaligned_or_missing_channel_layers_are_refused(two_channel, notifications):
    viewer, widget, stack = two_channel
    (picker,) = widget.picker.extra
    shifted = viewer.add_image(stack[1], name="shifted", scale=(2.0, 1.5), translate=(0.0, 5.0))
    picker.value = shifted
    assert widget.segment() is None
    assert errors(notifications)[-1] == ("'shifted' is not aligned with 'a t1' (different translate): the "
                                         "channels of one image need the same shape, scale and translate")
    picker.value = viewer.add_image(stack[1, :20], name="half", scale=(2.0, 1.0))
    assert widget.segment() is None
    assert "'half' is not aligned with 'a t1' (different shape and scale)" in errors(notifications)[-1]
    picker.value = None
    assert widget.segment() is None and errors(notifications)[-1] == "choose the layer of channel 't2' of 'a t1'"
    assert not made_layers(viewer, "a t1")


def test_fine_tune_on_an_rgb_photo_with_fields_of_view(make_napari_viewer, store, qtbot, fixed_step, notes):
    viewer = make_napari_viewer()
    rgb, vessels, disc = photo(0, (64, 64))
    other_rgb, _, other_disc = photo(1, (64, 64))
    image = viewer.add_image(rgb, name="fundus", rgb=True)
    garbage = vessels.copy()
    garbage[~disc] = 1  # labels outside the field of view must not count
    viewer.add_labels(garbage, name="fundus vessels")
    fov = viewer.add_labels(disc.astype(np.uint8), name="fundus fov")
    viewer.add_image(other_rgb, name="other", rgb=True)
    other_fov = viewer.add_image(other_disc.astype(np.float32), name="other fov")
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvbm", "Fine-tune with unlabeled data")
    data = widget.data
    assert [row.layers() for row in data.rows] == [(image, viewer.layers["fundus vessels"]), (image, fov)]
    data.rows[0].fov.value = viewer.add_labels(np.ones((32, 32), np.uint8), name="small")
    assert len(data.rows) == 2  # the field of view is no labeled pair
    assert widget.start() is None
    assert notes[-1] == "field of view 'small' has shape (32, 32) but image 'fundus' has shape (64, 64): they must " \
                        "match"
    data.rows[0].fov.value = fov
    assert len(data.rows) == 1
    names = [item.text() for item in data._unlabeled_items()]
    assert names == ["fundus", "other", "other fov"]
    assert [layer.name for layer in data.checked_unlabeled()] == ["other"]  # unpaired and RGB as the pair
    assert data.rows[0].fov.native.itemText(0) == "whole image"
    data._unlabeled_fov[names.index("other")].value = other_fov
    qtbot.waitUntil(lambda: [item.text() for item in data._unlabeled_items()] == ["fundus", "other"])
    assert [layer.name for layer in data.checked_unlabeled()] == ["other"]

    settings = widget.settings
    assert settings.preset.value == PLANNED
    settings.start_from.value = START_NEW_2D
    qtbot.waitUntil(lambda: settings.plan_line.text().startswith("Plan: 3 channels (red, green, blue)"),
                    timeout=TIMEOUT_MS)
    settings.preset.value = CPU_PRESET
    for name, value in (("patch_size", "32, 32"), ("width", 4), ("batch_labeled", 2), ("pretrain_iterations", 2),
                        ("selftrain_iterations", 2)):
        settings.fields[name].value = value
    assert widget.start() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert store.active == "fine-tuned 1", widget.status.message
    config = store.get()[1]
    assert (config.in_channels, config.channel_names, config.dim) == (3, RGB, 2)
    (case,) = widget.run.labeled.cases
    assert case.image.shape == (3, 64, 64) and case.channel_names == RGB
    np.testing.assert_array_equal(case.valid, disc)
    assert case.annotated is not None and not (case.annotated & ~disc).any()  # supervised inside the disc only
    (unlabeled,) = widget.run.unlabeled.cases
    assert unlabeled.name == "other" and unlabeled.image.shape == (3, 64, 64)
    np.testing.assert_array_equal(unlabeled.valid, other_disc)
    assert not any("not used" in note for note in notes)


def test_channel_layers_are_training_data_of_a_multi_channel_model(make_napari_viewer, store, tmp_path):
    name = store.load_file(checkpoint(tmp_path / "t1t2.pt", names=T1T2))
    viewer = make_napari_viewer()
    rng = np.random.default_rng(2)
    a, b = rng.random((2, 2, 32, 40), np.float32)
    viewer.add_image(a, channel_axis=0, name=["a t1", "a t2"])
    viewer.add_image(b, channel_axis=0, name=["b t1", "b t2"])
    labels = viewer.add_labels((a[0] > 0.5).astype(np.uint8), name="a labels")
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvbm", "Fine-tune with unlabeled data")
    data = widget.data
    assert widget.settings.start_from.value == START_ACTIVE and store.active == name and data.channels == T1T2
    (row,) = data.rows
    assert row.layers() == (viewer.layers["a t1"], labels) and row.picker.extra[0].value is viewer.layers["a t2"]
    assert [item.text() for item in data._unlabeled_items()] == ["a t1", "b t1"]  # one entry per case
    (labeled,), (unlabeled,) = data.snapshot()
    assert labeled.channel_names == unlabeled.channel_names == T1T2
    np.testing.assert_array_equal(labeled.image, a)
    np.testing.assert_array_equal(unlabeled.image, b)

    widget.settings.start_from.value = START_NEW_2D  # a new network: one layer is one image
    assert data.channels == () and not row.picker.extra
    assert [item.text() for item in data._unlabeled_items()] == ["a t1", "a t2", "b t1", "b t2"]
    assert data.snapshot()[0][0].image.shape == (32, 40)


def test_photo_with_a_field_of_view_lists_regions_to_correct(viewer_widget, qtbot, tmp_path, notifications):
    """A 2D photograph's suggestions are regions (not "slice 0"); a click centres and zooms on one;
    with a field of view nothing outside it is labelled or suggested."""
    viewer, widget = viewer_widget
    assert widget.load_checkpoint(checkpoint(tmp_path / "rgb.pt"))
    rgb, _, disc = photo(shape=(300, 520))
    layer = viewer.add_image(rgb, name="fundus", rgb=True, scale=(0.5, 0.5))
    corner = np.zeros_like(disc)
    corner[:256, :256] = disc[:256, :256]  # a field of view inside the first region only
    fov = viewer.add_labels(corner.astype(np.uint8), name="fundus fov", scale=(0.5, 0.5))
    widget.reset_choices()
    widget._image.value = layer
    widget._fov.value = fov
    segment(qtbot, widget)
    assert not errors(notifications), widget.status.message
    segmentation = made_layers(viewer, "fundus")["segmentation"]
    assert not segmentation.data[~corner.astype(bool)].any()
    panel = widget.ranking
    assert panel.title.text() == "<b>Regions to correct next</b>"
    listed = panel.slices()
    assert len(listed) == 6 and str(listed[0]) == "rows 0-256, columns 0-256"  # the only uncertain one
    assert panel.list.item(0).text().startswith("rows 0-256, columns 0-256 · uncertainty ")
    assert all(float(panel.list.item(i).text().rsplit(" ", 1)[1]) == 0 for i in range(1, 6))
    panel.jump(listed[3])
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], np.array([listed[3].y0 + listed[3].y1,
                                                                    listed[3].x0 + listed[3].x1]) / 4)
    segmentation.data[100, 100] = 1 - segmentation.data[100, 100]  # a correction in the first region
    segmentation.refresh()
    assert panel.refresh() == listed[1:]
    widget._fov.value = viewer.add_labels(np.ones((10, 10), np.uint8), name="wrong")
    assert widget.segment() is None and "field of view 'wrong' has shape (10, 10)" in widget.status.message
