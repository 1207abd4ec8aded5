"""Largest-component post-processing: decided on validation when training ends, carried by the model (spec 7)."""

import dataclasses

import numpy as np
import pytest
from test_inference import PointwiseModel

from napari_cvbm.core.checkpoint import load_model
from napari_cvbm.core.predictor import Predictor
from napari_cvbm.core.training import TrainingRun


def finished_run(config, cases, tmp_path, scores=None, monkeypatch=None):
    labeled, unlabeled = cases
    validation = labeled[:1] if scores is not None else []
    run = TrainingRun(config, labeled, unlabeled, validation=validation, out_dir=tmp_path)
    if scores is not None:  # the Dice of the selected model without / with the cleaning
        def score(model=None, largest_component=False):
            return scores[largest_component]
        monkeypatch.setattr(run, "_score", score)
    for _ in run.events():
        pass
    return run


@pytest.mark.parametrize("plain, cleaned, chosen", [(0.50, 0.60, True), (0.50, 0.50, True), (0.60, 0.50, False)])
def test_cleaning_is_kept_when_it_does_not_lower_validation_dice(tiny_config, tiny_cases, tmp_path, monkeypatch,
                                                                 plain, cleaned, chosen):
    run = finished_run(tiny_config, tiny_cases, tmp_path, {False: plain, True: cleaned}, monkeypatch)
    assert run.config.largest_component is chosen
    assert load_model(tmp_path / "best.pt")[1].largest_component is chosen  # the saved model carries it


def test_no_validation_means_no_cleaning_and_a_given_setting_wins(tiny_config, tiny_cases, tmp_path, monkeypatch):
    assert finished_run(tiny_config, tiny_cases, tmp_path / "a").config.largest_component is False
    given = dataclasses.replace(tiny_config, largest_component=True)
    run = finished_run(given, tiny_cases, tmp_path / "b", {False: 0.9, True: 0.1}, monkeypatch)
    assert run.config.largest_component is True  # the user's setting, whatever validation says


def test_the_predictor_applies_the_models_setting_unless_told(tiny_config):
    img = np.zeros((16, 32, 32), np.float32)
    img[2:6, 2:6, 2:6] = 10.0  # a small island
    img[8:14, 16:28, 16:28] = 10.0  # the structure
    config = dataclasses.replace(tiny_config, patch_size=(16, 32, 32), largest_component=True)
    cleaning = Predictor(PointwiseModel(dim=3), config)
    assert cleaning(img, device="cpu").labels[3, 3, 3] == 0
    assert cleaning(img, device="cpu", largest_component=False).labels[3, 3, 3] == 1
    plain = Predictor(PointwiseModel(dim=3), dataclasses.replace(config, largest_component=None))
    assert plain(img, device="cpu").labels[3, 3, 3] == 1
