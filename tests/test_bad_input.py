"""Awkward but valid volumes work; invalid ones get one clear CVBMInputError (engine level)."""

import numpy as np
import pytest

from napari_cvbm.core.config import preset
from napari_cvbm.core.data import load_cases, make_case
from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.inference import predict
from napari_cvbm.core.io import write_image
from napari_cvbm.core.networks import CVBMNet
from napari_cvbm.core.training import TrainingRun

CONFIG = preset("cpu", 3, width=4, patch_size=(32, 32, 32), pretrain_iterations=2, selftrain_iterations=2)


def _label(shape):
    label = np.zeros(shape, np.int64)
    label[tuple(slice(s // 4, max(s // 4 + 1, 3 * s // 4)) for s in shape)] = 1
    return label


@pytest.mark.parametrize("shape", [(5, 9, 7), (4, 96, 96), (40, 12, 40)], ids=["tiny", "anisotropic", "thin"])
def test_small_and_anisotropic_volumes_train_and_predict(shape):
    rng = np.random.default_rng(0)
    label = _label(shape)
    case = make_case("odd", label + rng.normal(0, 0.3, shape), label)
    run = TrainingRun(CONFIG, [case, case])
    events = list(run.events())
    assert len(events) == 4 and all(np.isfinite(e.losses["total"]) for e in events)
    pred = predict(run.final_model(), case.image, patch_size=CONFIG.patch_size)
    assert pred.labels.shape == shape and pred.fg.shape == (2, *shape)


def test_constant_image_predicts_without_nan():
    model = CVBMNet(dim=3, width=4)
    pred = predict(model, np.full((16, 32, 32), 7.0), heads="all", patch_size=(32, 32, 32))
    assert np.isfinite(pred.fg).all() and np.isfinite(pred.disagreement).all()


@pytest.mark.parametrize("image, label, message", [
    (np.full((8, 8, 8), np.inf), None, "NaN/Inf"),
    (np.zeros((8, 8, 8)), np.full((8, 8, 8), 0.5), "integer"),
    (np.zeros((8, 8, 8)), -np.ones((8, 8, 8), int), "negative"),
    (np.zeros((8, 8, 8)), np.zeros((8, 8, 9), int), "does not match"),
    (np.zeros((2, 8, 8, 8)), None, "2D or 3D"),
])
def test_invalid_cases_are_refused(image, label, message):
    with pytest.raises(CVBMInputError, match=message):
        make_case("bad", image, label)


def test_label_beyond_model_classes():
    with pytest.raises(CVBMInputError, match="outside 0..1"):
        make_case("bad", np.zeros((8, 8, 8)), np.full((8, 8, 8), 2), num_classes=2)


def test_spacing_mismatch_between_image_and_label(tmp_path):
    label = _label((8, 16, 16)).astype(np.uint8)
    write_image(tmp_path / "images" / "a.nii.gz", label.astype(np.float32), spacing=(2.0, 1.0, 1.0))
    write_image(tmp_path / "labels" / "a.nii.gz", label, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(CVBMInputError, match="spacing"):
        load_cases(tmp_path / "images", tmp_path / "labels")
