"""Slices to correct next (spec 7): per-slice uncertainty from fg confidence and fg/bg disagreement."""

import csv
import time

import numpy as np
import pytest

from napari_cvbm.core.guidance import (
    Region,
    edited_places,
    rank_regions,
    rank_slices,
    regions,
    slice_uncertainty,
    slices_apart,
    suggestions,
    voxel_uncertainty,
    write_ranking,
)
from napari_cvbm.core.inference import Prediction


def two_class(p1: np.ndarray) -> np.ndarray:
    """(2, *S) probabilities with P(class 1) = p1."""
    p1 = np.asarray(p1, np.float32)
    return np.stack([1 - p1, p1])


def sure_volume(shape=(6, 8, 8)) -> np.ndarray:
    return np.full(shape, 0.99, np.float32)


def test_voxel_uncertainty_bounds_the_error_probability_under_both_views():
    fg = two_class([0.9, 0.6, 0.99, 0.5])
    bg = two_class([0.9, 0.4, 0.01, 0.5])
    u = voxel_uncertainty(Prediction.from_views(fg, bg, None, "fg"))
    np.testing.assert_allclose(u, [0.1, 0.6, 0.99, 0.5], atol=1e-6)  # (1 - fg confidence) + disagreement
    label = fg.argmax(0)
    for view in (fg, bg):
        wrong = 1 - np.take_along_axis(view, label[None], 0)[0]
        assert np.all(u >= wrong - 1e-6)
    three = Prediction.from_views(np.array([[0.4], [0.3], [0.3]], np.float32),
                                  np.array([[0.0], [0.0], [1.0]], np.float32), None, "fg")
    np.testing.assert_allclose(voxel_uncertainty(three), [1.0])  # 0.6 + 0.7, capped at 1


def test_fg_only_prediction_counts_one_minus_confidence():
    fg = two_class(sure_volume())
    fg[:, 2, :4] = 0.5  # half of slice 2 is a coin toss
    pred = Prediction.from_views(fg, None, None, "fg")
    scores = slice_uncertainty(pred)
    assert scores.shape == (6,) and scores.dtype == np.float64
    np.testing.assert_allclose(scores[2], 32 * 0.5 + 32 * 0.01, rtol=1e-5)
    np.testing.assert_allclose(np.delete(scores, 2), 64 * 0.01, rtol=1e-5)


def test_slice_where_the_views_conflict_ranks_first():
    p = sure_volume()
    fg, bg = two_class(p), two_class(p)
    bg[:, 4, 2:6, 2:6] = two_class(np.full((4, 4), 0.01))  # both views sure, but they disagree
    fg[:, 1, 0, 0] = 0.5  # slice 1: a single unsure voxel
    ranked = rank_slices(Prediction.from_views(fg, bg, None, "fg"))
    assert [z for z, _ in ranked][:2] == [4, 1]
    assert sorted(z for z, _ in ranked) == list(range(6))
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    assert ranked[0][1] == pytest.approx(16 * 0.99 + 48 * 0.01, rel=1e-5)


def test_much_uncertain_structure_beats_one_noisy_voxel():
    p = sure_volume()
    p[0, 0, 0] = 0.5   # one voxel at a coin toss
    p[3, :, :3] = 0.8  # a wide band that is fairly, not very, unsure
    fg = two_class(p)
    ranked = rank_slices(Prediction.from_views(fg, fg.copy(), None, "fg"))
    assert ranked[0][0] == 3


def test_excluded_slices_leave_and_limit_cuts():
    p = sure_volume()
    for z in range(6):
        p[z, :z] = 0.6  # more unsure rows on later slices
    pred = Prediction.from_views(two_class(p), None, None, "fg")
    assert [z for z, _ in rank_slices(pred)] == [5, 4, 3, 2, 1, 0]
    assert [z for z, _ in rank_slices(pred, exclude=[5, 3])] == [4, 2, 1, 0]
    assert [z for z, _ in rank_slices(pred, exclude=np.array([4]), limit=2)] == [5, 3]
    assert rank_slices(pred, exclude=range(6)) == []


def test_2d_image_is_one_slice():
    p = np.full((16, 16), 0.99, np.float32)
    p[:4] = 0.5
    fg = two_class(p)
    pred = Prediction.from_views(fg, fg.copy(), None, "avg")
    scores = slice_uncertainty(pred)
    assert scores.shape == (1,)
    assert scores[0] == pytest.approx(64 * 0.5 + 192 * 0.01, rel=1e-5)
    assert rank_slices(pred) == [(0, pytest.approx(scores[0]))]
    assert rank_slices(pred, exclude=[0]) == []


def test_fast_on_a_volume():
    rng = np.random.default_rng(0)
    fg, bg = two_class(rng.random((88, 140, 180), np.float32)), two_class(rng.random((88, 140, 180), np.float32))
    pred = Prediction.from_views(fg, bg, None, "fg")
    rank_slices(pred)
    started = time.perf_counter()
    ranked = rank_slices(pred)
    assert len(ranked) == 88 and time.perf_counter() - started < 0.5


def test_write_ranking(tmp_path):
    path = tmp_path / "ranking.csv"
    write_ranking(path, {"a": [(3, 12.5), (0, 1.0)], "b": [(0, 2.0)], "photo": [(Region(0, 256, 512, 700), 4.0)]})
    rows = list(csv.DictReader(path.open()))
    assert [tuple(r.values()) for r in rows] == [
        ("a", "3", "", "", "12.5", "1"), ("a", "0", "", "", "1", "2"), ("b", "0", "", "", "2", "1"),
        ("photo", "", "0-256", "512-700", "4", "1")]
    assert [p.name for p in tmp_path.iterdir()] == ["ranking.csv"]  # no temp file left


def test_ranking_spreads_first_suggestions_apart():
    p1 = sure_volume((12, 4, 4))
    for z, level in ((5, 0.5), (6, 0.55), (4, 0.6), (9, 0.7), (1, 0.8)):  # an uncertain cluster at 4-6
        p1[z] = level
    pred = Prediction.from_views(two_class(p1), None, None, "fg")
    plain = [z for z, _ in rank_slices(pred)]
    assert plain[:5] == [5, 6, 4, 9, 1]
    spread = [z for z, _ in rank_slices(pred, apart=3)]
    assert spread[:3] == [5, 9, 1] and spread[3:5] == [6, 4]  # the neighbours of 5 wait, in score order
    assert sorted(spread) == list(range(12))  # nothing is dropped
    assert [z for z, _ in rank_slices(pred, exclude=[8], limit=2, apart=3)] == [5, 1]  # 9 is next to corrected 8


def test_suggestions_stay_two_working_slices_apart():
    from napari_cvbm.core.config import preset

    model = preset("cpu", 3, spacing=(1.25, 1.25, 1.25))
    assert slices_apart(model, (0.625, 0.625, 0.625)) == 4  # two working slices of the image's 0.625 mm
    assert slices_apart(preset("cpu", 3), (2.0, 1.0, 1.0)) == 2  # a model at the image's own spacing
    assert slices_apart(preset("cpu", 2), (10.0, 1.5, 1.5)) == 1  # a 2D model learns slice by slice


def test_a_photograph_is_ranked_by_regions_and_corrected_regions_leave():
    p1 = np.full((600, 520), 0.99, np.float32)
    p1[300:400, 260:300] = 0.5  # an unsure patch in the middle region of the second row
    p1[10, 10] = 0.5  # one unsure pixel in the first region
    pred = Prediction.from_views(two_class(p1), None, None, "fg")
    tiles = regions(p1.shape)
    assert len(tiles) == 9 and tiles[-1] == Region(512, 600, 512, 520)  # 3 x 3, the last ones cut to the image
    assert sum((r.y1 - r.y0) * (r.x1 - r.x0) for r in tiles) == p1.size
    ranked = rank_regions(pred)
    assert ranked[0][0] == Region(256, 512, 256, 512) and ranked[1][0] == Region(0, 256, 0, 256)
    np.testing.assert_allclose(sum(score for _, score in ranked), voxel_uncertainty(pred).sum(), rtol=1e-5)
    assert str(ranked[0][0]) == "rows 256-512, columns 256-512"
    assert suggestions(pred, config=None) == ranked  # a 2D image: regions, whatever the model
    corrected = pred.labels.copy()
    corrected[300, 300] = 1 - corrected[300, 300]
    assert edited_places(corrected, pred.labels) == [Region(256, 512, 256, 512)]
    assert [r for r, _ in suggestions(pred, None, exclude=edited_places(corrected, pred.labels), limit=1)] == [
        Region(0, 256, 0, 256)]


def test_outside_the_field_of_view_is_certain_background():
    fg = two_class(np.full((6, 8), 0.7, np.float32))
    bg = two_class(np.full((6, 8), 0.2, np.float32))
    valid = np.zeros((6, 8), bool)
    valid[1:4, 2:6] = True
    pred = Prediction.from_views(fg.copy(), bg.copy(), fg.copy(), "fg").restrict(valid)
    assert pred.labels[valid].all() and not pred.labels[~valid].any()
    for view in (pred.fg, pred.bg, pred.mix):
        assert np.all(view[0][~valid] == 1.0) and np.all(view[1][valid] > 0.1)
    assert np.all(pred.fg_confidence[~valid] == 1.0) and np.all(pred.disagreement[~valid] == 0.0)
    assert voxel_uncertainty(pred)[~valid].sum() == 0 and voxel_uncertainty(pred)[valid].min() > 0.3
    with pytest.raises(Exception, match="field of view has shape"):
        pred.restrict(np.ones((3, 3), bool))


def test_the_guidance_benchmark_tells_a_score_that_finds_the_errors_from_one_that_does_not():
    """benchmarks/guidance_quality.py: slices whose uncertainty follows their wrong voxels rank them
    first (correlation 1, the listed slices hold what the best ones hold); reversed, they rank last."""
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from guidance_quality import volume_figures

    truth = np.zeros((6, 8, 8), np.int64)
    truth[:, 2:6, 2:6] = 1
    labels = truth.copy()
    for z in range(6):  # slice z: z wrong voxels
        labels[z, 0, :z] = 1
    confidence = np.ones(truth.shape, np.float32)
    for z in range(6):
        confidence[z, 0, :z] = 0.4
    finds = volume_figures(SimpleNamespace(fg_confidence=confidence, disagreement=None, labels=labels), truth, 2, 2)
    assert finds["rho_wrong"] == pytest.approx(1.0) and finds["share_listed"] == finds["share_best"] == 9 / 15
    assert finds["share_any"] == pytest.approx(2 / 6) and finds["dice_listed_sum"] == finds["dice_lowest"] < 1
    misses = volume_figures(SimpleNamespace(fg_confidence=confidence[::-1].copy(), disagreement=None, labels=labels),
                            truth, 2, 2)
    assert misses["rho_wrong"] == pytest.approx(-1.0) and misses["share_listed"] == pytest.approx(1 / 15)
