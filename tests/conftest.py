import contextlib
import json

import numpy as np
import pytest

from napari_cvbm.core.config import preset
from napari_cvbm.core.data import make_case
from napari_cvbm.core.io import write_image


def blob_volume(seed, shape=(32, 40, 40), noise=0.5):
    """A noisy ellipsoid and its label: a tiny stand-in for a labeled scan."""
    rng = np.random.default_rng(seed)
    grid = np.mgrid[tuple(slice(0, s) for s in shape)]
    centre = [rng.uniform(0.35 * s, 0.65 * s) for s in shape]
    radii = [rng.uniform(0.18 * s, 0.28 * s) for s in shape]
    label = (sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1).astype(np.int64)
    return label + rng.normal(0, noise, shape).astype(np.float32), label


def write_dataset(root, names, **splits):
    """Blob volumes and labels under ``root`` in the ../shared/data layout, with ``splits``."""
    for i, name in enumerate(names):
        image, label = blob_volume(i, shape=(24, 40, 40))
        write_image(root / "images" / f"{name}.nii.gz", image)
        write_image(root / "labels" / f"{name}.nii.gz", label.astype(np.uint8))
    (root / "splits.json").write_text(json.dumps(splits))
    return root


STEP_S = 0.5  # what a measured training step takes in tests that plan


@pytest.fixture
def fixed_step(monkeypatch):
    """A measured training step 'takes' STEP_S, at once: plans are quick and repeatable, and step
    counts follow from the budget alone."""
    from napari_cvbm.core import planning

    monkeypatch.setattr(planning, "_step_seconds", lambda config, device: STEP_S)


@pytest.fixture
def tiny_cases():
    """(labeled, unlabeled) blob cases."""
    labeled = [make_case(f"lab{i}", *blob_volume(i)) for i in range(2)]
    unlabeled = [make_case(f"unl{i}", blob_volume(10 + i)[0]) for i in range(2)]
    return labeled, unlabeled


@pytest.fixture
def tiny_config():
    """The cpu preset shrunk to a few fast iterations."""
    return preset("cpu", 3, width=4, patch_size=(32, 32, 32), pretrain_iterations=4,
                  selftrain_iterations=4, validate_every=2, checkpoint_every=2)


@pytest.fixture
def store(monkeypatch):
    """A fresh model store shared by the widgets, whose active model is the bundled starter."""
    from napari_cvbm.gui import models

    fresh = models.ModelStore()
    monkeypatch.setattr(models, "MODEL_STORE", fresh)
    return fresh


@pytest.fixture
def viewer_widget(make_napari_viewer, store):
    """A napari viewer with the Segment widget docked."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvbm", "Segment")
    return viewer, widget


@contextlib.contextmanager
def _recording(convert):
    """A list that receives ``convert(notification)`` for each napari notification shown meanwhile."""
    from napari.utils.notifications import notification_manager

    seen = []

    def record(notification):
        seen.append(convert(notification))

    notification_manager.notification_ready.connect(record)
    try:
        yield seen
    finally:
        notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def notifications():
    """The napari notifications shown during the test."""
    with _recording(lambda notification: notification) as seen:
        yield seen


@pytest.fixture
def notes():
    """The messages of the napari notifications shown during the test."""
    with _recording(lambda notification: str(notification.message)) as seen:
        yield seen
