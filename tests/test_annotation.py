"""Which slices of a partly labeled volume count (core.annotation)."""

import numpy as np
import pytest

from napari_cvbm.core.annotation import annotated_mask, counted_slices, edited_slices, format_slices, labeled_slices


def test_edited_slices_finds_exactly_the_changed_slices():
    original = np.zeros((10, 6, 6), np.uint8)
    original[3:7, 2:4, 2:4] = 1
    current = original.copy()
    current[4, 0, 0] = 1      # added a voxel
    current[6] = 0            # erased a slice
    current[9, 5, 5] = 2      # a new class on an empty slice
    np.testing.assert_array_equal(edited_slices(current, original), [4, 6, 9])
    assert edited_slices(original, original.copy()).size == 0
    with pytest.raises(ValueError):
        edited_slices(current, original[:5])


def test_labeled_slices_and_2d_images():
    labels = np.zeros((5, 4, 4), int)
    labels[1, 0, 0] = 1
    labels[3:5, 1, 1] = 2
    np.testing.assert_array_equal(labeled_slices(labels), [1, 3, 4])
    assert labeled_slices(np.zeros((5, 4, 4))).size == 0
    np.testing.assert_array_equal(labeled_slices(np.ones((4, 4))), [0])  # a 2D image is one slice


def test_annotated_mask():
    mask = annotated_mask((5, 3, 3), [1, 3])
    assert mask.dtype == bool and mask.shape == (5, 3, 3)
    np.testing.assert_array_equal(mask.reshape(5, -1).all(1), [False, True, False, True, False])
    assert not mask[[0, 2, 4]].any()
    assert not annotated_mask((5, 3, 3), []).any()
    assert annotated_mask((3, 3), [0]).all()


def test_counted_slices_rule():
    original = np.zeros((6, 4, 4), np.uint8)
    original[1:5, 1:3, 1:3] = 1
    corrected = original.copy()
    corrected[2, 0, 0] = 1
    # a corrected CVBM segmentation counts where it was edited, not where it holds labels
    np.testing.assert_array_equal(counted_slices(corrected, original), [2])
    assert counted_slices(original.copy(), original).size == 0
    # user-drawn labels count where they hold labels
    np.testing.assert_array_equal(counted_slices(corrected), [1, 2, 3, 4])
    # "all slices are complete" counts every slice
    np.testing.assert_array_equal(counted_slices(corrected, original, complete=True), np.arange(6))
    # an original of another shape (the layer's data was replaced) is ignored
    np.testing.assert_array_equal(counted_slices(corrected, original[:3]), [1, 2, 3, 4])


def test_format_slices():
    assert format_slices([20, 21, 22, 23, 30]) == "20–23, 30"
    assert format_slices(np.array([5, 3, 4, 9])) == "3–5, 9"
    assert format_slices([]) == ""
