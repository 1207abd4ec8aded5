"""Multi-channel images and fields of view through the engine: sampling, training, planning,
prediction and scoring."""

import csv

import numpy as np
import pytest
import torch

from napari_cvbm.core import training
from napari_cvbm.core.channels import RGB
from napari_cvbm.core.checkpoint import build_model, save_model
from napari_cvbm.core.config import preset
from napari_cvbm.core.data import PatchSampler, make_case
from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.metrics import case_metrics, dice_score
from napari_cvbm.core.planning import plan
from napari_cvbm.core.predictor import Predictor
from napari_cvbm.core.training import TrainingRun

TWO = ("T1", "T2")


def _ellipsoid(grid, centre, radii):
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1


def two_modalities(seed, shape=(24, 32, 32)):
    """(2-channel image, organ label): the organ is bright in both channels, one decoy in only the
    first and another in only the second; all three alike in size and placed at random, apart, so no
    single channel tells the organ from a decoy."""
    rng = np.random.default_rng(seed)
    grid = np.mgrid[tuple(slice(0, s) for s in shape)]
    blobs = []
    while len(blobs) < 3:
        radii = [rng.uniform(0.17 * s, 0.22 * s) for s in shape]
        centre = [rng.uniform(r + 1, s - r - 1) for r, s in zip(radii, shape)]
        grown = _ellipsoid(grid, centre, [r + 2 for r in radii])
        if not any((grown & b).any() for b in blobs):
            blobs.append(_ellipsoid(grid, centre, radii))
    organ, decoy_1, decoy_2 = blobs
    image = np.stack([organ | decoy_1, organ | decoy_2]).astype(np.float32)
    image += rng.normal(0, 0.2, image.shape).astype(np.float32)
    return image, organ.astype(np.int64)


def test_both_modalities_are_used_where_only_their_combination_separates_the_organ():
    config = preset("cpu", 3, width=8, patch_size=(16, 32, 32), pretrain_iterations=60, selftrain_iterations=0,
                    validate_every=100, checkpoint_every=100, in_channels=2, channel_names=TWO)
    labeled = [make_case(f"l{s}", *two_modalities(s), channel_names=TWO) for s in range(3)]
    run = TrainingRun(config, labeled)
    list(run.events())
    predictor = Predictor(run.final_model(), run.config)
    held_out = [two_modalities(20 + i) for i in range(3)]
    dice = np.mean([dice_score(predictor(image, channels=TWO).labels, organ, 2) for image, organ in held_out])
    # the best a model seeing only the first channel can do: the organ and its decoy look the same there
    one_channel = np.mean([dice_score((image[0] > 0.5) | organ.astype(bool), organ, 2)
                           for image, organ in held_out])
    blanked = np.mean([dice_score(predictor(np.stack([image[0], np.zeros_like(image[1])]), channels=TWO).labels,
                                  organ, 2) for image, organ in held_out])
    print(f"both channels {dice:.3f}, best from the first alone {one_channel:.3f}, second blanked {blanked:.3f}")
    assert dice > one_channel + 0.1
    assert dice - blanked > 0.2  # the trained model relies on the second channel


def test_checkpoint_keeps_channels_and_prediction_checks_them(tmp_path):
    config = preset("cpu", 2, width=4, patch_size=(32, 32), slice_size=None, in_channels=3, channel_names=RGB)
    path = save_model(tmp_path / "rgb.pt", build_model(config), config)
    predictor = Predictor.load(path)
    assert predictor.config.in_channels == 3 and predictor.config.channel_names == RGB
    photo = np.random.default_rng(0).random((3, 48, 64)).astype(np.float32)
    assert predictor(photo, channels=RGB).labels.shape == (48, 64)
    with pytest.raises(CVBMInputError, match=r"expects 3 channels \(red, green, blue\); the image has 1 channel"):
        predictor(photo[0], channels=())
    with pytest.raises(CVBMInputError, match="in this order"):
        predictor(photo, channels=("blue", "green", "red"))
    with pytest.raises(CVBMInputError, match="takes 3 channels first"):
        predictor(photo[:2])
    grey = preset("cpu", 2, width=4, patch_size=(32, 32), slice_size=None)
    with pytest.raises(CVBMInputError, match=r"expects 1 channel; the image has 3 channels \(red, green, blue\) \("):
        Predictor(build_model(grey), grey)(photo, channels=RGB)


def test_training_refuses_images_of_other_channels():
    image, label = two_modalities(0)
    config = preset("cpu", 3, width=4, patch_size=(16, 32, 32), in_channels=2, channel_names=TWO)
    with pytest.raises(CVBMInputError, match="expects 2 channels.*has 1 channel"):
        TrainingRun(config, [make_case("grey", image[0], label)])
    with pytest.raises(CVBMInputError, match="expected 2 channels"):
        make_case("short", image[:1], label, channel_names=TWO)


def _fundus(seed, shape=(96, 128)):
    """An RGB 'photograph': thin bright lines (vessels) on a disc (the field of view), black outside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    disc = (yy - shape[0] / 2) ** 2 / (0.45 * shape[0]) ** 2 + (xx - shape[1] / 2) ** 2 / (0.45 * shape[1]) ** 2 < 1
    vessels = np.zeros(shape, bool)
    for row in rng.integers(10, shape[0] - 10, 4):
        vessels[row:row + 2] = True
    vessels &= disc
    image = np.stack([0.8 * disc - 0.3 * vessels, 0.5 * disc - 0.4 * vessels, 0.2 * disc]).astype(np.float32)
    return image + rng.normal(0, 0.05, image.shape).astype(np.float32), vessels.astype(np.int64), disc


def test_field_of_view_bounds_supervision_and_pseudo_labels(monkeypatch):
    image, vessels, disc = _fundus(0)
    garbage = np.where(disc, vessels, 1)  # labels outside the disc must never count
    labeled = make_case("photo", image, garbage, channel_names=RGB, valid=disc)
    assert not labeled.annotated[~disc].any() and labeled.annotated[disc].all()
    unlabeled = make_case("other", _fundus(1)[0], channel_names=RGB, valid=_fundus(1)[2])
    sampler = PatchSampler([labeled], 2, patch_size=(64, 64), rng=np.random.default_rng(0))
    batch = sampler.sample(16)
    assert batch.images.shape == (16, 3, 64, 64)
    assert ((batch.annotated > 0) <= (batch.valid > 0)).all() and (batch.valid == 0).any()

    seen = []
    real_rw, real_bcl = training.region_wide_loss, training.bidirectional_consistency

    def region_wide_loss(output, fg, bg, labeled_region, unlabeled_region, *args, **kwargs):
        seen.append(("rw", labeled_region + unlabeled_region))
        return real_rw(output, fg, bg, labeled_region, unlabeled_region, *args, **kwargs)

    def bidirectional_consistency(output, region=None):
        seen.append(("bcl", region))
        return real_bcl(output, region)

    monkeypatch.setattr(training, "region_wide_loss", region_wide_loss)
    monkeypatch.setattr(training, "bidirectional_consistency", bidirectional_consistency)
    config = preset("cpu", 2, width=4, patch_size=(64, 64), slice_size=None, batch_labeled=4, batch_unlabeled=4,
                    pretrain_iterations=2, selftrain_iterations=3, in_channels=3, channel_names=RGB,
                    validate_every=100, checkpoint_every=100)
    run = TrainingRun(config, [labeled], [unlabeled])
    captured = []
    real_draw = run._draw_mixed
    run._draw_mixed = lambda: captured.append(real_draw()) or captured[-1]
    list(run.events())
    assert len(seen) == 2 * 2 * 3  # two mixed inputs per step, both losses, three steps
    for step, batches in enumerate(captured[:3]):  # the prefetcher draws one batch ahead
        outside = [b.valid == 0 for b in batches]
        assert all(o.any() for o in outside)
        for kind, region in seen[4 * step:4 * step + 4]:
            assert region is not None and float(region.max()) <= 1.0 and (region == 0).any(), kind
    rw = [region for kind, region in seen if kind == "rw"]
    bcl = [region for kind, region in seen if kind == "bcl"]
    for a, b in zip(rw, bcl):  # every loss term weighs the same field of view
        assert torch.equal(a, b)


def test_plan_keeps_thin_structures_at_full_resolution_and_takes_the_channels(fixed_step):
    photos = [make_case(f"p{i}", image, vessels, channel_names=RGB, valid=disc)
              for i, (image, vessels, disc) in enumerate(_fundus(s, shape=(512, 768)) for s in range(2))]
    planned = plan(photos, device=torch.device("cpu"), budget_s=60)
    assert planned.config.dim == 2 and planned.config.slice_size is None  # 2 px lines would vanish at 128
    assert planned.config.patch_size == (128, 128)
    assert planned.config.in_channels == 3 and planned.config.channel_names == RGB
    line = planned.describe()
    assert line.startswith("3 channels (red, green, blue), patches 128×128 at the images' resolution"), line
    # four separate vessels per photograph: a crop holding several would keep only one
    assert not planned.config.clean_pseudo_labels and planned.cleaning_keeps < 0.9
    assert "pseudo-labels keep every component (the largest keeps" in line
    assert plan(photos, budget_s=60, overrides={"clean_pseudo_labels": True}).config.clean_pseudo_labels
    rng = np.random.default_rng(0)
    grid = np.mgrid[:8, :200, :180]
    heart = _ellipsoid(grid, (4, 100, 90), (6, 40, 35)).astype(np.int64)  # a thick structure: resized slices
    slices = [make_case("mri", heart + rng.normal(0, 0.3, heart.shape).astype(np.float32), heart)]
    resized = plan(slices, device=torch.device("cpu"), budget_s=60, overrides={"dim": 2}).config
    assert resized.slice_size == (128, 128) and resized.in_channels == 1
    assert resized.clean_pseudo_labels  # one heart per slice: the cleaning keeps it whole
    with pytest.raises(CVBMInputError, match="same channels"):
        plan(photos + slices[:0] + [make_case("grey", photos[0].image[0], photos[0].label)])


def test_scoring_ignores_what_lies_outside_the_field_of_view():
    _, vessels, disc = _fundus(3)
    noisy = vessels.copy()
    noisy[~disc] = 1  # all wrong, but outside the field of view
    scored = case_metrics(noisy, vessels, 2, mask=disc)[1]
    assert scored == case_metrics(vessels, vessels, 2)[1]
    assert case_metrics(noisy, vessels, 2)[1]["dice"] < 0.5


def test_photographs_with_masks_through_the_cli(tmp_path, capsys):
    """Train on JPEG photographs with 0/255 PNG labels and field-of-view masks, predict PNG labels on
    each photo's grid, and score them inside the field of view only."""
    from PIL import Image

    from napari_cvbm import cli
    from napari_cvbm.core.io import read_image, read_labels

    for i in range(3):
        image, vessels, disc = _fundus(i, shape=(64, 96))
        rgb = np.clip(np.moveaxis(image, 0, -1) * 255, 0, 255).astype(np.uint8)
        for folder, array in (("images" if i < 2 else "unlabeled", rgb), ("labels", vessels), ("fov", disc)):
            (tmp_path / folder).mkdir(exist_ok=True)
            saved = array if array.ndim == 3 else (array * 255).astype(np.uint8)
            Image.fromarray(saved).save(tmp_path / folder / f"p{i}.{'jpg' if array.ndim == 3 else 'png'}")

    def cvbm(*args):
        code = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = cvbm("train", "--images", tmp_path / "images", "--labels", tmp_path / "labels", "--mask",
                          tmp_path / "fov", "--unlabeled", tmp_path / "unlabeled", "--out", tmp_path / "run",
                          "--set", "pretrain_iterations=3", "--set", "selftrain_iterations=2", "--set", "width=4",
                          "--set", "batch_labeled=2", "--set", "batch_unlabeled=2", "--dim", "2")
    assert code == 0, err
    assert "plan: 3 channels (red, green, blue)," in out
    assert "read as class 1" in err  # the 0/255 masks, with one note
    code, _, err = cvbm("predict", tmp_path / "run" / "model.pt", tmp_path / "unlabeled", "--out", tmp_path / "pred",
                        "--probabilities")
    assert code == 0, err
    labels = read_labels(tmp_path / "pred" / "p2.png")
    assert labels.array.shape == read_image(tmp_path / "unlabeled" / "p2.jpg").array.shape[1:] == (64, 96)
    assert (tmp_path / "pred" / "maps" / "p2_confidence_fg.tif").is_file()
    code, _, err = cvbm("predict", tmp_path / "run" / "model.pt", tmp_path / "unlabeled", "--out",
                        tmp_path / "masked", "--probabilities", "--mask", tmp_path / "fov", "--ranking")
    assert code == 0, err
    disc = read_labels(tmp_path / "fov" / "p2.png").array > 0
    masked = read_labels(tmp_path / "masked" / "p2.png").array
    confidence = read_image(tmp_path / "masked" / "maps" / "p2_confidence_fg.tif").array
    assert not masked[~disc].any() and np.all(confidence[~disc] == 1.0)  # outside: certain background
    np.testing.assert_array_equal(masked[disc], labels.array[disc])  # inside: as without the mask
    rows = list(csv.DictReader((tmp_path / "masked" / "ranking.csv").open()))
    assert [(r["case"], r["slice"], r["rows"], r["columns"]) for r in rows] == [("p2", "", "0-64", "0-96")]
    code, out, err = cvbm("evaluate", tmp_path / "pred", tmp_path / "labels", "--mask", tmp_path / "fov",
                          "--only-predicted")
    assert code == 0 and "1 of 3 labelled cases" in out, err
    code, _, err = cvbm("predict", tmp_path / "run" / "model.pt", tmp_path / "fov" / "p2.png", "--out",
                        tmp_path / "grey")
    assert code == 2 and err.strip() == ("cvbm: error: the model expects 3 channels (red, green, blue); the image "
                                         "has 1 channel")
