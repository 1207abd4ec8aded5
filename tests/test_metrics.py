"""Metrics (spec 8): values derived by hand, see the comments next to each expectation."""

import csv
import math

import numpy as np
import pytest

from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.metrics import (
    METRIC_NAMES,
    binary_metrics,
    case_metrics,
    dice_score,
    evaluate_cases,
    format_table,
    summarize,
    write_csv,
)


def squares_offset_by_one():
    """Two 4x4 squares in a 10x10 image, the second shifted down by one row."""
    prediction = np.zeros((10, 10), dtype=np.int64)
    truth = np.zeros((10, 10), dtype=np.int64)
    prediction[2:6, 2:6] = 1
    truth[3:7, 2:6] = 1
    return prediction, truth


def test_metric_names():
    assert METRIC_NAMES == ("dice", "jaccard", "hd95", "asd")


def test_identical_masks_are_perfect():
    labels = np.zeros((8, 9, 10), dtype=np.uint8)
    labels[2:6, 3:7, 1:5] = 1
    labels[1:3, 1:3, 6:9] = 2
    result = case_metrics(labels, labels.copy(), num_classes=3)
    assert set(result) == {1, 2}
    for values in result.values():
        assert values == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}


def test_squares_offset_by_one_voxel():
    prediction, truth = squares_offset_by_one()
    values = case_metrics(prediction, truth, num_classes=2)[1]
    # |P| = |T| = 16, overlap = rows 3..5 x cols 2..5 = 12, union = 20
    assert values["dice"] == pytest.approx(2 * 12 / 32)  # 0.75
    assert values["jaccard"] == pytest.approx(12 / 20)  # 0.6
    # Surfaces are the 12-voxel rings. Prediction ring -> truth ring: the top row (4 voxels)
    # is 1 away, the two side voxels of rows 3, 4, 5 (6 voxels) lie on the truth ring (0), and
    # the 2 middle voxels of row 5 are 1 away. So 6 zeros and 6 ones, and the same the other
    # way round. Pooled 24 distances: 12 zeros then 12 ones; the 95th percentile sits at
    # position 0.95 * 23 = 21.85, between two ones -> 1. ASD (prediction -> truth) = 6/12.
    assert values["hd95"] == pytest.approx(1.0)
    assert values["asd"] == pytest.approx(0.5)


def test_spacing_scales_distances_per_axis():
    # one voxel each, two rows apart along axis 0: every distance is 2 voxels
    prediction = np.zeros((6, 5), dtype=np.int64)
    truth = np.zeros((6, 5), dtype=np.int64)
    prediction[1, 2] = 1
    truth[3, 2] = 1
    assert case_metrics(prediction, truth, 2)[1]["hd95"] == pytest.approx(2.0)
    assert case_metrics(prediction, truth, 2)[1]["asd"] == pytest.approx(2.0)
    doubled = case_metrics(prediction, truth, 2, spacing=(2.0, 1.0))[1]
    assert doubled["hd95"] == pytest.approx(4.0)
    assert doubled["asd"] == pytest.approx(4.0)
    # spacing along the other axis does not change a distance along axis 0
    other = case_metrics(prediction, truth, 2, spacing=(1.0, 3.0))[1]
    assert other["hd95"] == pytest.approx(2.0)
    # Dice does not depend on spacing
    assert doubled["dice"] == 0.0


def test_spacing_on_squares_changes_nearest_partner():
    prediction, truth = squares_offset_by_one()
    values = case_metrics(prediction, truth, 2, spacing=(2, 1))[1]
    # prediction ring -> truth ring with spacing (2, 1): the top row is 2 away (one row down),
    # the 2 middle voxels of row 5 are now nearer to the truth ring's side voxel (1 to the
    # left/right) than to row 6 (2 below): 6 zeros, 2 ones, 4 twos; the same the other way.
    # Pooled 24: 12 zeros, 4 ones, 8 twos; position 21.85 falls among the twos -> 2.
    assert values["hd95"] == pytest.approx(2.0)
    assert values["asd"] == pytest.approx((2 * 1 + 4 * 2) / 12)


def test_hd95_pools_both_directions_and_asd_is_directed():
    # A one-row image: every foreground voxel is a surface voxel (outside counts as background).
    truth = np.zeros((1, 30), dtype=np.int64)
    truth[0, :10] = 1
    prediction = truth.copy()
    prediction[0, 29] = 1  # one stray voxel 20 away from the truth's end (column 9)
    values = case_metrics(prediction, truth, 2)[1]
    assert values["dice"] == pytest.approx(2 * 10 / 21)
    assert values["jaccard"] == pytest.approx(10 / 11)
    # pooled distances: 20 zeros and one 20; 95th percentile at position 0.95 * 20 = 19 -> 0
    # (the max of the two directed 95th percentiles would be 10: that is not what we compute)
    assert values["hd95"] == pytest.approx(0.0)
    # ASD is medpy's directed asd(prediction, truth): (10 * 0 + 20) / 11
    assert values["asd"] == pytest.approx(20 / 11)
    swapped = case_metrics(truth, prediction, 2)[1]
    assert swapped["asd"] == pytest.approx(0.0)
    assert swapped["hd95"] == pytest.approx(0.0)


def test_3d_surface_distance():
    # two 3x3x3 cubes, one 2 slices further along z
    prediction = np.zeros((9, 7, 7), dtype=np.int64)
    truth = np.zeros((9, 7, 7), dtype=np.int64)
    prediction[1:4, 2:5, 2:5] = 1
    truth[3:6, 2:5, 2:5] = 1
    values = case_metrics(prediction, truth, 2, spacing=(2.5, 1.0, 1.0))[1]
    # overlap = one 3x3 slice = 9 of 27 voxels each
    assert values["dice"] == pytest.approx(18 / 54)
    assert values["jaccard"] == pytest.approx(9 / 45)
    # surface of a 3x3x3 cube = all but its centre: 26 voxels. Prediction surface -> truth
    # surface: slice z=3 (9) lies on the truth surface: 0; slice z=1 (9) is 2 slices = 5 mm
    # from truth slice z=3; slice z=2 (8 ring voxels) is 2.5 mm from truth slice z=3.
    # ASD = (9 * 5 + 8 * 2.5) / 26. Both directions are mirror images: pooled 52 values =
    # 18 zeros, 16 x 2.5, 18 x 5; position 0.95 * 51 = 48.45 is among the fives -> 5.
    assert values["asd"] == pytest.approx((9 * 5 + 8 * 2.5) / 26)
    assert values["hd95"] == pytest.approx(5.0)


def test_empty_conventions():
    empty = np.zeros((3, 4), dtype=np.int64)
    full = empty.copy()
    full[1, 1] = 1
    both = case_metrics(empty, empty, 2)[1]
    assert both == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    for prediction, truth in ((empty, full), (full, empty)):
        values = case_metrics(prediction, truth, 2)[1]
        assert values["dice"] == 0.0 and values["jaccard"] == 0.0
        assert values["hd95"] == pytest.approx(5.0)  # diagonal of a 3x4 image
        assert values["asd"] == pytest.approx(5.0)
    in_mm = case_metrics(empty, full, 2, spacing=(2.0, 0.5))[1]
    assert in_mm["hd95"] == pytest.approx(math.hypot(6.0, 2.0))
    assert in_mm["asd"] == pytest.approx(math.hypot(6.0, 2.0))


def test_multi_class_rows_and_averaging():
    truth = np.zeros((10, 10), dtype=np.int64)
    truth[2:6, 2:6] = 1
    truth[7:9, 7:9] = 2
    perfect = truth.copy()
    # case "b": class 1 offset by one row (dice 0.75), class 2 missing (dice 0)
    shifted = np.zeros_like(truth)
    shifted[3:7, 2:6] = 1
    rows = evaluate_cases(
        [("a", perfect, truth, None), ("b", shifted, truth, (1.0, 1.0))], num_classes=3
    )
    assert [(r["case"], r["class"]) for r in rows] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert set(rows[0]) == {"case", "class", *METRIC_NAMES}
    assert rows[2]["dice"] == pytest.approx(0.75)
    assert rows[3]["dice"] == 0.0
    assert rows[3]["hd95"] == pytest.approx(math.hypot(10, 10))

    summary = summarize(rows)
    assert summary["num_cases"] == 2
    assert summary["classes"][1]["dice"] == pytest.approx((1.0 + 0.75) / 2)
    assert summary["classes"][2]["dice"] == pytest.approx((1.0 + 0.0) / 2)
    assert summary["classes"][1]["jaccard"] == pytest.approx((1.0 + 0.6) / 2)
    # mean over cases of the per-case mean over classes: ((1 + 1)/2 + (0.75 + 0)/2) / 2
    assert summary["mean"]["dice"] == pytest.approx((1.0 + 0.375) / 2)
    assert summary["mean"]["hd95"] == pytest.approx((0.0 + (1.0 + math.hypot(10, 10)) / 2) / 2)
    assert summary["mean"]["asd"] == pytest.approx((0.0 + (0.5 + math.hypot(10, 10)) / 2) / 2)

    table = format_table(summary, distance_unit="mm")
    assert "Mean" in table and "95HD (mm)" in table
    assert "68.75" in table  # mean Dice in percent
    assert "87.50" in table  # class 1 Dice in percent


def test_write_csv(tmp_path):
    prediction, truth = squares_offset_by_one()
    rows = evaluate_cases([("case-1", prediction, truth, None)], num_classes=2)
    path = tmp_path / "out" / "metrics.csv"
    write_csv(rows, path)
    with path.open(newline="") as handle:
        read = list(csv.DictReader(handle))
    assert list(read[0]) == ["case", "class", "dice", "jaccard", "hd95", "asd"]
    assert read[0]["case"] == "case-1" and read[0]["class"] == "1"
    assert float(read[0]["dice"]) == pytest.approx(0.75)


def test_float_and_bool_label_maps_are_accepted():
    prediction, truth = squares_offset_by_one()
    values = case_metrics(prediction.astype(np.float32), truth.astype(bool), 2)[1]
    assert values["dice"] == pytest.approx(0.75)


def test_shape_mismatch_is_reported_with_both_shapes():
    with pytest.raises(CVBMInputError, match=r"\(4, 5\).*\(4, 6\)"):
        case_metrics(np.zeros((4, 5), int), np.zeros((4, 6), int), 2)


@pytest.mark.parametrize("bad", [3, -1])
def test_labels_outside_range_are_refused(bad):
    labels = np.zeros((4, 5), dtype=np.int64)
    wrong = labels.copy()
    wrong[0, 0] = bad
    with pytest.raises(CVBMInputError, match=str(bad)):
        case_metrics(wrong, labels, 3)
    with pytest.raises(CVBMInputError, match="truth"):
        case_metrics(labels, wrong, 3)


def test_other_bad_inputs():
    labels = np.zeros((4, 5), dtype=np.int64)
    with pytest.raises(CVBMInputError, match="fraction"):
        case_metrics(labels + 0.5, labels, 2)
    with pytest.raises(CVBMInputError, match="spacing"):
        case_metrics(labels, labels, 2, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(CVBMInputError, match="spacing"):
        case_metrics(labels, labels, 2, spacing=(1.0, 0.0))
    with pytest.raises(CVBMInputError, match="num_classes"):
        case_metrics(labels, labels, 1)
    with pytest.raises(CVBMInputError, match="2D or 3D"):
        case_metrics(np.zeros(5, int), np.zeros(5, int), 2)
    with pytest.raises(CVBMInputError, match="case b"):
        evaluate_cases([("b", labels, np.zeros((3, 3), int), None)], 2)
    with pytest.raises(CVBMInputError, match="twice"):
        evaluate_cases([("a", labels, labels, None), ("a", labels, labels, None)], 2)
    with pytest.raises(CVBMInputError):
        summarize([])


def test_binary_metrics_matches_case_metrics():
    prediction, truth = squares_offset_by_one()
    assert binary_metrics(prediction == 1, truth == 1) == case_metrics(prediction, truth, 2)[1]


def test_dice_score_matches_case_metrics_mean():
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 4, size=(6, 12, 12))
    truth = rng.integers(0, 4, size=(6, 12, 12))
    per_class = case_metrics(pred, truth, 4)
    expected = np.mean([per_class[c]["dice"] for c in (1, 2, 3)])
    assert dice_score(pred, truth, 4) == pytest.approx(expected)
    # a class absent from both maps counts as perfect
    assert dice_score(np.zeros((4, 4), int), np.zeros((4, 4), int), 2) == 1.0
