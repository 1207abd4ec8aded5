"""Which slices of a partly labeled volume count as annotated (pure numpy, no GUI).

Rule (used by the Fine-tune widget): a CVBM segmentation the user corrected counts on the
slices that differ from the prediction; labels the user drew count on the slices that hold
a label; "all slices are complete" makes every slice count. Slices run along axis 0; a 2D
image is a single slice.
"""

from typing import Optional, Sequence

import numpy as np


def _per_slice(array: np.ndarray) -> np.ndarray:
    """``array`` as (slices, voxels): a 2D image is one slice."""
    array = np.asarray(array)
    return array.reshape(1 if array.ndim < 3 else array.shape[0], -1)


def edited_slices(current: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Indices of the slices (axis 0) where ``current`` differs from ``original``."""
    current, original = np.asarray(current), np.asarray(original)
    if current.shape != original.shape:
        raise ValueError(f"shapes differ: {current.shape} vs {original.shape}")
    return np.flatnonzero((_per_slice(current) != _per_slice(original)).any(1))


def labeled_slices(labels: np.ndarray) -> np.ndarray:
    """Indices of the slices (axis 0) holding at least one non-zero label."""
    return np.flatnonzero(_per_slice(labels).any(1))


def annotated_mask(shape: Sequence[int], slices: Sequence[int]) -> np.ndarray:
    """A boolean mask of ``shape`` that is True on the given slices (the whole image for 2D)."""
    mask = np.zeros(shape, dtype=bool)
    if len(slices):
        if len(shape) < 3:
            mask[...] = True
        else:
            mask[np.asarray(slices, dtype=int)] = True
    return mask


def counted_slices(labels: np.ndarray, original: Optional[np.ndarray] = None,
                   complete: bool = False) -> np.ndarray:
    """The slices whose labels count, by the rule above; ``original`` is the uncorrected
    CVBM prediction (ignored when its shape differs from ``labels``)."""
    labels = np.asarray(labels)
    if complete:
        return np.arange(_per_slice(labels).shape[0])
    if original is not None and np.shape(original) == labels.shape:
        return edited_slices(labels, original)
    return labeled_slices(labels)


def format_slices(slices: Sequence[int]) -> str:
    """Slice indices as compact ranges: ``[20, 21, 22, 23, 30]`` -> ``"20–23, 30"``."""
    slices = sorted(int(s) for s in slices)
    runs = []
    for s in slices:
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in runs)
