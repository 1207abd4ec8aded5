"""Training decisions that every caller shares: augmentation padding, the model's architecture,
the consistency ramp, and the validation window overlap."""

import dataclasses

import numpy as np
import pytest
import torch

from napari_cvbm.core import predictor, training
from napari_cvbm.core.checkpoint import build_model
from napari_cvbm.core.config import preset
from napari_cvbm.core.data import PatchSampler, make_case


@pytest.mark.parametrize("dim, shape", [(3, (24, 32, 32)), (2, (6, 40, 40))])
def test_rotated_corners_are_never_supervised(dim, shape):
    """An organ filling the whole crop: every supervised voxel must stay foreground after rotation."""
    rng = np.random.default_rng(0)
    case = make_case("full", rng.normal(size=shape).astype(np.float32), np.ones(shape, np.int64))
    sampler = PatchSampler([case], dim, patch_size=(24, 32, 32)[-dim:] if dim == 3 else (32, 32),
                           rng=np.random.default_rng(1), rot_flip_probability=0.0, rotate_degrees=45.0)
    _, labels, annotated, _ = sampler.sample(32)
    assert (annotated == 0).any()  # rotated samples do have unsupervised corners
    assert (labels[annotated > 0] == 1).all()


def test_fine_tuning_keeps_every_architecture_field_of_its_model():
    """A batch-norm, single-branch model rebuilt from a config built the way fine-tuning builds it."""
    trained = preset("cpu", 3, width=4, patch_size=(32, 32, 32), norm="batch", background_branch=False,
                     num_classes=3)
    model = build_model(trained)
    fine_tune = preset("cpu", 3, pretrain_iterations=2, **trained.architecture(), patch_size=trained.patch_size)
    rebuilt = build_model(fine_tune)
    rebuilt.load_state_dict(model.state_dict())  # raises on any architecture difference
    assert set(trained.architecture()) == {"dim", "in_channels", "channel_names", "num_classes", "width",
                                           "background_branch", "norm"}


@pytest.mark.parametrize("name, dim", [("cpu", 3), ("cpu", 2), ("paper", 3), ("paper", 2)])
def test_the_consistency_ramp_follows_the_self_training_length(name, dim):
    base = preset(name, dim)
    fraction = base.consistency_rampup / base.selftrain_iterations
    shorter = preset(name, dim, selftrain_iterations=base.selftrain_iterations // 10)
    assert shorter.consistency_rampup == round(fraction * shorter.selftrain_iterations)
    assert preset(name, dim, selftrain_iterations=40, consistency_rampup=7).consistency_rampup == 7  # as given
    assert preset(name, dim, selftrain_iterations=0).consistency_rampup == 0


def test_validation_uses_the_configured_window_overlap(tiny_cases, tiny_config, monkeypatch):
    seen = []
    real = predictor.predict

    def spy(*args, **kwargs):
        seen.append(kwargs["overlap"])
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, "predict", spy)
    labeled, unlabeled = tiny_cases
    config = dataclasses.replace(tiny_config, inference_overlap=0.625, selftrain_iterations=2, validate_every=1)
    torch.manual_seed(0)
    for _ in training.TrainingRun(config, labeled, unlabeled, validation=labeled[:1]).events():
        pass
    assert seen and set(seen) == {0.625}
