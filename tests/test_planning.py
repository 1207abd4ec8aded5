"""The planner (working spacing, patch, step counts) and resampling to and from the working spacing."""

import dataclasses

import numpy as np
import pytest
import torch

from napari_cvbm.core import planning
from napari_cvbm.core.checkpoint import build_model, load_model, save_model
from napari_cvbm.core.config import preset
from napari_cvbm.core.data import Case, make_case
from napari_cvbm.core.fine_tuning import VALIDATIONS, held_out_checks, prepare_fine_tune, teacher_kept
from napari_cvbm.core.holdout import split_corrections
from napari_cvbm.core.predictor import Predictor
from napari_cvbm.core.resampling import resample_case, resample_labels


def box_case(name, shape, spacing, box, annotated_slices=None):
    """A noisy image with a box-shaped structure of ``box`` voxels (centred), labelled."""
    rng = np.random.default_rng(len(name))
    label = np.zeros(shape, np.int64)
    label[tuple(slice((n - b) // 2, (n - b) // 2 + b) for n, b in zip(shape, box))] = 1
    image = label + rng.normal(0, 0.3, shape).astype(np.float32)
    annotated = None
    if annotated_slices is not None:
        annotated = np.zeros(shape, bool)
        annotated[list(annotated_slices)] = True
    return make_case(name, image, label, annotated=annotated, spacing=spacing)


def test_large_structure_coarsens_the_working_spacing_until_a_patch_sees_it(fixed_step):
    # an LA-like volume: 0.625 mm voxels, 88 x 141 x 191, a left atrium of 36 x 56 x 101 mm
    case = box_case("la", (88, 141, 191), (0.625,) * 3, (58, 90, 161))
    plan = planning.plan([case], budget_s=300)
    config = plan.config
    # at 0.9375 mm a 32x48x80 patch (the most within the budget) sees 75 of the 81 mm needed in x
    assert config.spacing == (1.25, 1.25, 1.25) and config.patch_size == (32, 48, 80)
    assert np.prod(config.patch_size) <= planning.PATCH_VOXELS["cpu"]
    seen = np.array(config.patch_size) * 1.25 / (np.array((58, 90, 161)) * 0.625)
    assert seen.min() >= planning.CONTEXT
    assert planning.working_spacing(planning.fingerprint([case]), planning.PATCH_VOXELS["gpu"])[0] == (0.625,) * 3


def test_small_structure_keeps_the_native_spacing_and_anisotropy_is_kept(fixed_step):
    small = planning.plan([box_case("s", (40, 96, 96), (1.0, 0.5, 0.5), (10, 20, 20))], budget_s=300)
    assert small.config.spacing == (1.0, 0.5, 0.5)
    # 5 mm slices, 0.7 mm in plane: the in-plane axes coarsen, the slices stay 5 mm
    thick = planning.plan([box_case("t", (20, 400, 400), (5.0, 0.7, 0.7), (12, 300, 300))], budget_s=300)
    assert thick.config.spacing[0] == 5.0 and thick.config.spacing[1] > 0.7


def test_partly_annotated_structure_is_measured_on_the_slices_that_count():
    case = box_case("p", (60, 64, 64), (1.0,) * 3, (40, 30, 20), annotated_slices=[20, 30, 39])
    # slices 20, 30 and 39 of its 40 hold it: 20 slices spread plus their mean gap of 9.5 on each side
    assert planning.fingerprint([case]).structure_mm == (39.0, 30.0, 20.0)


def test_step_counts_follow_the_budget_and_user_settings_win(fixed_step):
    case = box_case("c", (48, 64, 64), (1.0,) * 3, (20, 30, 30))
    plan = planning.plan([case], budget_s=300)
    pretrain = int(300 / (0.5 * (1 + 2 * planning.SELFTRAIN_COST)))
    assert (plan.config.pretrain_iterations, plan.config.selftrain_iterations) == (pretrain, 2 * pretrain)
    assert plan.seconds == pytest.approx(300, rel=0.02) and "about 5 min on cpu" in plan.describe()
    assert plan.config.validate_every == pretrain // planning.VALIDATIONS
    given = planning.plan([case], budget_s=300, overrides={"patch_size": (32, 32, 32), "pretrain_iterations": 7,
                                                           "selftrain_iterations": 3, "width": 4})
    c = given.config
    assert (c.patch_size, c.pretrain_iterations, c.selftrain_iterations, c.width) == ((32, 32, 32), 7, 3, 4)
    assert given.step_seconds is None and "about" not in given.describe()
    # a given pre-training count (a trained model kept as the teacher) leaves the rest to self-training
    kept = planning.plan([case], budget_s=300, overrides={"pretrain_iterations": 1})
    rest = int((300 - 0.5) / (0.5 * planning.SELFTRAIN_COST))
    assert (kept.config.pretrain_iterations, kept.config.selftrain_iterations) == (1, rest)
    assert kept.seconds == pytest.approx(300, rel=0.02)
    # a given spacing gets the patch planned for it; an empty one (None) is the images' own
    coarse = planning.plan([case], budget_s=300, overrides={"spacing": (2.0, 2.0, 2.0)}).config
    assert coarse.spacing == (2.0, 2.0, 2.0) and coarse.patch_size == (32, 32, 32)
    native = planning.plan([case], budget_s=300, overrides={"spacing": None}).config
    assert native.spacing is None and native.patch_size == plan.config.patch_size


def test_validation_time_comes_out_of_the_budget(fixed_step, monkeypatch):
    monkeypatch.setattr(planning, "inference_window_seconds", lambda *args: 0.1)  # a window's forward pass
    case = box_case("c", (48, 64, 64), (1.0,) * 3, (20, 30, 30))
    alone = planning.plan([case], budget_s=600)
    few = planning.plan([case], budget_s=600, validation=[case])
    assert 0 < few.validation_seconds and few.config.pretrain_iterations < alone.config.pretrain_iterations
    assert few.config.pretrain_iterations // few.config.validate_every == planning.VALIDATIONS  # cheap: as often
    assert few.seconds == pytest.approx(600, rel=0.02)  # steps and validations together fill the budget
    large = [box_case(f"v{i}", (64, 128, 128), (1.0,) * 3, (20, 30, 30)) for i in range(2)]
    costly = planning.plan([case], budget_s=600, validation=large)
    c, each = costly.config, costly.validation_seconds
    per_pretraining = c.pretrain_iterations // c.validate_every  # self-training: twice as many
    assert per_pretraining < planning.VALIDATIONS  # validates less often: as often as its share of the budget allows
    share = planning.VALIDATION_SHARE * 600
    assert (3 * per_pretraining * each <= share or per_pretraining == 1) and 3 * (per_pretraining + 1) * each > share
    assert costly.seconds == pytest.approx(600, rel=0.05)


def test_a_slowed_inference_timing_never_costs_more_than_training(fixed_step, monkeypatch):
    """A window's forward pass is timed; a timing slowed by other work on the machine is capped at
    what training one window of the batch costs, so the plan keeps its steps."""
    case = box_case("c", (48, 64, 64), (1.0,) * 3, (20, 30, 30))
    monkeypatch.setattr(planning, "inference_window_seconds", lambda *args: 1e-3)
    fair = planning.plan([case], budget_s=600, validation=[case])
    monkeypatch.setattr(planning, "inference_window_seconds", lambda *args: 1e3)
    slowed = planning.plan([case], budget_s=600, validation=[case])
    windows = slowed.validation_seconds / (slowed.step_seconds / slowed.config.batch_labeled)
    assert windows == pytest.approx(round(windows)) and 1 <= round(windows) < 100  # capped, per window
    assert fair.validation_seconds < slowed.validation_seconds
    assert slowed.config.pretrain_iterations > 0.5 * fair.config.pretrain_iterations


def test_2d_plan_resizes_whole_slices(fixed_step):
    case = box_case("d", (10, 200, 180), (1.0,) * 3, (6, 60, 60))
    plan = planning.plan([case], budget_s=120, overrides={"dim": 2})
    assert plan.config.slice_size == (128, 128) and plan.config.spacing is None
    assert "slices resized to 128×128" in plan.describe()


def test_pseudo_label_cleaning_is_decided_on_volumes_labelled_throughout(fixed_step):
    """Two boxes in a volume: its crops hold both and the largest component drops one; corrected
    slices alone cannot tell how the structure connects in 3D, so they leave the cleaning on."""
    full = box_case("two", (24, 40, 40), (1.0,) * 3, (16, 30, 30))
    full.label[:, 18:22] = 0  # the box split in two halves along y
    planned = planning.plan([full], budget_s=60)
    assert not planned.config.clean_pseudo_labels and 0.4 < planned.cleaning_keeps < 0.6
    one = box_case("one", (24, 40, 40), (1.0,) * 3, (16, 30, 30))
    assert planning.plan([one], budget_s=60).config.clean_pseudo_labels
    partial = box_case("corrected", (24, 40, 40), (1.0,) * 3, (16, 30, 30), annotated_slices=(6, 12, 18))
    partial.label[:, 18:22] = 0
    corrected = planning.plan([partial], budget_s=60)
    assert corrected.cleaning_keeps is None and corrected.config.clean_pseudo_labels


def test_annotated_slices_survive_resampling():
    label = np.zeros((20, 8, 8), np.int64)
    annotated = np.zeros_like(label, bool)
    for z in (3, 4, 9):  # every other slice would keep 3 and 9 but drop 4
        label[z] = z
        annotated[z] = True
    small, mask = resample_labels(label, (10, 4, 4), annotated)
    kept = np.flatnonzero(mask.any((1, 2)))
    assert kept.tolist() == [1, 2, 4] and small[kept, 0, 0].tolist() == [3, 4, 9]
    assert not small[~mask].any()  # the other working slices come from unannotated slices


def test_plan_travels_in_the_checkpoint_and_predictions_land_on_the_image_grid(tmp_path):
    config = preset("cpu", 3, width=4, patch_size=(32, 32, 32), spacing=(2.0, 2.0, 2.0))
    torch.manual_seed(0)
    path = save_model(tmp_path / "m.pt", build_model(config), config)
    model, loaded = load_model(path)
    assert loaded.spacing == (2.0, 2.0, 2.0)
    image = np.random.default_rng(1).normal(size=(40, 56, 72)).astype(np.float32)
    predictor = Predictor(model, loaded)
    full = predictor(image, spacing=(1.0, 1.0, 1.0), heads="all")
    assert full.labels.shape == full.fg_confidence.shape == image.shape and full.fg.shape == (2, *image.shape)
    # the same as predicting the image resampled to 2 mm and bringing the probabilities back
    small = resample_case(Case("x", image, spacing=(1.0, 1.0, 1.0)), (2.0, 2.0, 2.0)).image
    assert small.shape == (20, 28, 36)
    direct = predictor(small, heads="all")
    back = torch.nn.functional.interpolate(torch.from_numpy(direct.fg)[None], size=image.shape, mode="trilinear",
                                           align_corners=False)[0].numpy()
    np.testing.assert_allclose(full.fg, back, atol=1e-5)
    # an image already at the working spacing is not resampled
    np.testing.assert_array_equal(predictor(small, spacing=(2.0, 2.0, 2.0)).labels, direct.labels)


def test_fine_tuning_keeps_the_models_network_and_a_working_spacings_input(fixed_step):
    case = box_case("f", (48, 64, 64), (1.0,) * 3, (20, 30, 30))
    planned = preset("cpu", 3, width=6, patch_size=(32, 32, 48), spacing=(2.0, 2.0, 2.0))
    keeps = planning.fine_tune_overrides(planned)
    assert keeps == {**planned.architecture(), **planned.model_input()}
    config = planning.plan([case], budget_s=300, overrides=keeps).config
    assert (config.width, config.patch_size, config.spacing) == (6, (32, 32, 48), (2.0, 2.0, 2.0))
    assert config.pretrain_iterations == int(300 / (0.5 * (1 + 2 * planning.SELFTRAIN_COST)))  # counts planned
    # a model trained at each image's own spacing (the starter): spacing and patch planned as for a new network
    native = preset("cpu", 3, width=6, patch_size=(32, 32, 48))
    assert planning.fine_tune_overrides(native) == native.architecture()
    config = planning.plan([case], budget_s=300, overrides=planning.fine_tune_overrides(native)).config
    fresh = planning.plan([case], budget_s=300, overrides={"width": 6}).config
    assert config.width == 6 and (config.patch_size, config.spacing) == (fresh.patch_size, fresh.spacing)
    # a 2D model on resized slices keeps its slice size
    slices = preset("paper", 2)
    assert planning.fine_tune_overrides(slices)["slice_size"] == (256, 256)


def test_a_fine_tune_holds_out_corrections_and_plans_from_all_of_them(fixed_step):
    """core.fine_tuning: what the Fine-tune widget and benchmarks/annotation_loop.py both run."""
    boxes = [box_case(f"f{i}", (48, 64, 64), (1.0,) * 3, (20, 30, 30)) for i in range(4)]
    # four scans, not frames of one (core.look_alike): the box in another place in each
    cases = [dataclasses.replace(c, image=np.roll(c.image, 16 * i, 2), label=np.roll(c.label, 16 * i, 2))
             for i, c in enumerate(boxes)]
    model = preset("cpu", 3, width=6, patch_size=(32, 32, 48), spacing=(2.0, 2.0, 2.0), num_classes=3)
    fine = prepare_fine_tune(cases, [], model, seed=5)
    held = [c.name for c in split_corrections(cases, seed=5).held_out]
    assert fine.num_classes == 3 and [c.name for c in fine.split.held_out] == held and len(fine.split.train) == 3
    made = fine.plan(budget_s=300, overrides={"width": 8, "num_classes": 2, "lr": 0.02})
    assert made.fingerprint.labeled == 4  # from all the corrections, as the plan the widget shows before Start
    config = made.config  # what the model fixes wins over the settings given, which win over the plan
    assert (config.width, config.num_classes, config.spacing, config.lr) == (6, 3, (2.0, 2.0, 2.0), 0.02)
    new = prepare_fine_tune(cases, [], None, seed=5)  # a new network: the labels' classes, the settings win
    assert new.num_classes == 2 and new.plan(budget_s=300, overrides={"width": 8}).config.width == 8
    total = config.pretrain_iterations + config.selftrain_iterations
    assert held_out_checks(config, fine.split.held_out).validate_every == round(total / VALIDATIONS)
    # a trained model stays the teacher, held fixed, its student at a tenth of its lr; settings given win
    assert teacher_kept(model) == {"pretrain_iterations": 1, "ema_decay": 1.0, "lr": pytest.approx(model.lr / 10)}
    kept = fine.plan(budget_s=300, overrides={**teacher_kept(model), "ema_decay": 0.9}).config
    assert (kept.pretrain_iterations, kept.ema_decay, kept.lr) == (1, 0.9, pytest.approx(model.lr / 10))
    assert kept.selftrain_iterations > config.selftrain_iterations  # the budget goes to self-training
    assert "steps (the teacher held fixed): about" in fine.plan(budget_s=300, overrides=teacher_kept(model)).describe()
    assert "held fixed" not in made.describe()
    assert held_out_checks(config, []) is config
