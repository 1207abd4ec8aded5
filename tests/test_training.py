"""Training loop: events, partial annotation, checkpoints and exact resume."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import blob_volume

from napari_cvbm.core.checkpoint import build_model, load_checkpoint, load_model
from napari_cvbm.core.data import make_case
from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.training import TrainingRun


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values() if p.is_floating_point()])


def test_events_cover_both_phases_with_every_loss_term(tiny_cases, tiny_config, tmp_path):
    labeled, unlabeled = tiny_cases
    run = TrainingRun(tiny_config, labeled, unlabeled, validation=labeled[:1], out_dir=tmp_path)
    before = _weights(run.model).clone()
    events = list(run.events())
    assert [(e.phase, e.iteration) for e in events] == [("pretrain", i) for i in range(1, 5)] + \
        [("selftrain", i) for i in range(1, 5)]
    assert set(events[0].losses) == {"fg", "bg", "mix", "total"}
    assert {"fg_l", "fg_u", "bg_l", "bg_u", "rw", "bcl_direct", "bcl_inverse", "bcl", "total"} <= set(events[-1].losses)
    assert all(np.isfinite(v) for e in events for v in e.losses.values())
    assert [e.validation_dice is not None for e in events] == [False, True] * 4
    assert all(e.lr <= tiny_config.lr for e in events) and events[0].elapsed <= events[-1].elapsed
    assert not torch.equal(before, _weights(run.model))
    for name in ("last.pt", "pretrained.pt", "best.pt"):
        assert load_checkpoint(tmp_path / name)["config"]["width"] == 4
    model, config = load_model(tmp_path / "best.pt")
    assert run.config.largest_component in (True, False)  # decided on validation at the end (spec 7)
    assert config == dataclasses.replace(tiny_config, largest_component=run.config.largest_component)
    assert model.num_classes == 2


def test_teacher_is_ema_of_student(tiny_cases, tiny_config):
    labeled, unlabeled = tiny_cases
    run = TrainingRun(tiny_config, labeled, unlabeled)
    events = run.events()
    for _ in range(tiny_config.pretrain_iterations + 1):
        next(events)
    # one student step done: teacher = 0.99 * pretrained + 0.01 * student
    pretrained = _weights(run.pretrained_model())
    expected = 0.99 * pretrained + 0.01 * _weights(run.model)
    teacher = torch.cat([p.detach().flatten() for p in run.teacher.parameters()])
    params = torch.cat([p.detach().flatten() for p in run.model.parameters()])
    base = torch.cat([p.detach().flatten() for p in run.pretrained_model().parameters()])
    assert torch.allclose(teacher, 0.99 * base + 0.01 * params, atol=1e-6)
    assert expected.shape == pretrained.shape


def test_resume_continues_exactly(tiny_cases, tiny_config, tmp_path):
    labeled, unlabeled = tiny_cases
    tiny_config = dataclasses.replace(tiny_config, channels_last=True)
    straight = TrainingRun(tiny_config, labeled, unlabeled, out_dir=tmp_path / "a")
    list(straight.events())

    interrupted = TrainingRun(tiny_config, labeled, unlabeled, out_dir=tmp_path / "b")
    events = interrupted.events()
    for _ in range(6):  # stop mid self-training, right after a checkpoint (every 2 steps)
        next(events)
    events.close()
    resumed = TrainingRun.resume(tmp_path / "b" / "last.pt", labeled, unlabeled, out_dir=tmp_path / "b")
    assert (resumed.phase, resumed.iteration) == ("selftrain", 2)
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d)  # the layout (and speed) of the first run
               for p in resumed.teacher.parameters() if p.ndim == 5)
    list(resumed.events())
    assert torch.allclose(_weights(straight.model), _weights(resumed.model), atol=1e-5)
    assert torch.allclose(_weights(straight.teacher), _weights(resumed.teacher), atol=1e-5)


def test_partial_annotation_only_counts_annotated_slices(tiny_config):
    image, label = blob_volume(3)
    annotated = np.zeros(label.shape, bool)
    annotated[14:18] = True  # the user corrected four slices
    case = make_case("partial", image, label, annotated=annotated)
    run = TrainingRun(tiny_config, [case])
    region = run.labeled.sample(8).annotated
    assert 0 < float(region.mean()) < 1  # crops carry annotated and unannotated voxels
    events = list(run.events())
    assert np.isfinite(events[-1].losses["total"])


@pytest.mark.parametrize("problem, message", [
    ("no_labeled", "no labeled images"),
    ("background_only", "only background"),
    ("class_out_of_range", "outside the model's classes"),
    ("two_d_for_3d", "3D model needs 3D volumes"),
])
def test_bad_training_input_is_refused(tiny_config, problem, message):
    image, label = blob_volume(0)
    labeled = [make_case("a", image, label)]
    if problem == "no_labeled":
        labeled = []
    elif problem == "background_only":
        labeled = [make_case("a", image, np.zeros_like(label))]
    elif problem == "class_out_of_range":
        labeled = [make_case("a", image, label * 3)]
    elif problem == "two_d_for_3d":
        labeled = [make_case("a", image[10], label[10])]
    with pytest.raises(CVBMInputError, match=message):
        TrainingRun(tiny_config, labeled)


def test_load_cases_by_name(tmp_path):
    from napari_cvbm.core.data import load_cases
    from napari_cvbm.core.io import write_image

    for name in ("a", "b", "c"):
        image, label = blob_volume(1, (8, 16, 16))
        write_image(tmp_path / "images" / f"{name}.nii.gz", image)
        write_image(tmp_path / "labels" / f"{name}.nii.gz", label.astype(np.uint8))
    assert [c.name for c in load_cases(tmp_path / "images", tmp_path / "labels", names=["c", "a"])] == ["c", "a"]
    assert [c.name for c in load_cases(tmp_path / "images", names=["b"])] == ["b"]
    with pytest.raises(CVBMInputError, match="not found"):
        load_cases(tmp_path / "images", names=["zzz"])


def _masked_dice(model, config, case):
    """The fg-head Dice of ``model`` on ``case``'s annotated voxels, computed here by hand."""
    from napari_cvbm.core.metrics import dice_score
    from napari_cvbm.core.predictor import Predictor

    labels = Predictor(model, config)(case.image, heads="fg", device="cpu", amp=config.amp).labels
    region = case.annotated if case.annotated is not None else np.ones(labels.shape, bool)
    return dice_score(labels[region], case.label[region], config.num_classes)


def test_validation_scores_only_the_annotated_voxels(tiny_config):
    image, label = blob_volume(3)
    annotated = np.zeros(label.shape, bool)
    annotated[12:20] = True  # the held-out slices
    wrong = label.copy()
    wrong[~annotated] = 1 - label[~annotated]  # every other voxel carries the wrong label
    scores = {}
    for name, truth, mask in [("right", label, annotated), ("wrong", wrong, annotated), ("unmasked", wrong, None)]:
        torch.manual_seed(0)
        run = TrainingRun(tiny_config, [make_case("train", image, label)],
                          validation=[make_case(name, image, truth, annotated=mask)])
        scores[name] = run._validate()
    assert scores["wrong"] == scores["right"] == pytest.approx(_masked_dice(run.model, tiny_config, make_case(
        "v", image, label, annotated=annotated)))
    assert scores["unmasked"] != scores["right"]  # without the mask the wrong labels would count


def test_initial_dice_is_that_of_the_starting_weights_and_survives_resume(tiny_cases, tiny_config, tmp_path):
    labeled, unlabeled = tiny_cases
    image, label = blob_volume(5)
    annotated = np.zeros(label.shape, bool)
    annotated[10:22:3] = True
    validation = [make_case("held", image, label, annotated=annotated)]
    torch.manual_seed(1)
    start = build_model(tiny_config)
    expected = _masked_dice(start, tiny_config, validation[0])
    run = TrainingRun(tiny_config, labeled, unlabeled, validation=validation, out_dir=tmp_path,
                      initial_weights=start.state_dict())
    assert run.initial_dice is None  # measured when the run starts
    events = run.events()
    scored = [next(events) for _ in range(6)]  # into self-training, right after a checkpoint
    assert run.initial_dice == pytest.approx(expected)
    dices = [e.validation_dice for e in scored]
    assert run.pretrained_dice == max(d for d in dices[:4] if d is not None)
    events.close()

    resumed = TrainingRun.resume(tmp_path / "last.pt", labeled, unlabeled, validation=validation)
    assert resumed.initial_dice == run.initial_dice and resumed.pretrained_dice == run.pretrained_dice
    calls = []
    score = resumed._score
    resumed._score = lambda model=None, largest_component=False: (
        calls.append(model is None) or score(model, largest_component))
    rest = list(resumed.events())
    # no second initial score; at the end, the selected model with the cleaning (spec 7; without it, the
    # selected model's validation score stands)
    assert calls.count(True) == sum(e.validation_dice is not None for e in rest) == 1 and calls.count(False) == 1
    assert resumed.initial_dice == run.initial_dice
    dices = [e.validation_dice for e in scored[4:] + rest if e.validation_dice is not None]
    assert resumed.final_dice == resumed.best_dice == max(dices)


def test_final_dice_without_self_training_is_the_teachers(tiny_cases, tiny_config):
    labeled, unlabeled = tiny_cases
    run = TrainingRun(dataclasses.replace(tiny_config, selftrain_iterations=0), labeled, unlabeled,
                      validation=labeled[:1])
    events = list(run.events())
    assert run.phase == "done" and run.best_dice < 0
    dices = [e.validation_dice for e in events if e.validation_dice is not None]
    assert run.final_dice == run.pretrained_dice == max(dices)
    assert TrainingRun(tiny_config, labeled).final_dice is None
