"""Volumes that look alike: frames of one scan (cine MRI's end-diastolic and end-systolic frames,
time points, repeated acquisitions) or copies. A held-out check that trains on one of them and
checks on the other measures how well the model recalls an image, not how it does on another scan
(spec 6: select on data kept apart from training), so ``core.holdout`` keeps look-alikes together.

Two 3D images look alike when they share the spatial shape, voxel spacing and channels, and their
thumbnails (block means, at most ``THUMBNAIL`` blocks, z-scored) correlate at ``THRESHOLD`` or more. On the ACDC
copy (``python benchmarks/look_alike.py DATA/acdc``) the two frames of one patient correlate at 0.84
to 1.00 (80 pairs) and volumes of two patients of one shape at most 0.58 (292 pairs), apart from two
patients whose images are identical (1.00). 2D images are never grouped: photographs of one kind
share their framing (fundus photographs: the same black border around the disc), which a thumbnail
correlation cannot tell from a shared scan.
"""

from typing import List, Sequence

import numpy as np

from .channels import channels_first
from .data import Case

THUMBNAIL = (12, 24, 24)  # (z, y, x), at most
THRESHOLD = 0.75


def _block_means(array: np.ndarray, axis: int, blocks: int) -> np.ndarray:
    """``array`` averaged over ``blocks`` near-equal blocks along ``axis`` (one pass, any size)."""
    edges = np.linspace(0, array.shape[axis], blocks + 1).astype(int)
    counts = np.diff(edges).reshape([-1 if a == axis else 1 for a in range(array.ndim)])
    return np.add.reduceat(array, edges[:-1], axis=axis) / counts


def thumbnail(case: Case) -> np.ndarray:
    """``case``'s image in block means of at most ``THUMBNAIL`` blocks a channel, z-scored, flattened."""
    small = channels_first(np.asarray(case.image, np.float32), case.channels)
    for axis, (size, blocks) in enumerate(zip(case.shape, THUMBNAIL), start=1):
        small = _block_means(small, axis, min(size, blocks))
    small = small.ravel()
    return (small - small.mean()) / (small.std() + 1e-6)


def correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Pearson correlation of two thumbnails (of cases of one shape and channel count)."""
    return float(first @ second / first.size)


def comparable(a: Case, b: Case) -> bool:
    """Whether ``a`` and ``b`` are volumes of one shape, spacing and channel count."""
    return (len(a.shape) == 3 and a.shape == b.shape and a.channels == b.channels
            and len(a.spacing) == len(b.spacing) and np.allclose(a.spacing, b.spacing))


def look_alike_groups(cases: Sequence[Case]) -> List[List[int]]:
    """Indices of ``cases`` in groups of look-alikes (linked pairwise), each group in index order and
    the groups in the order of their first case; a case like no other is a group of its own."""
    group = list(range(len(cases)))
    thumbnails: dict = {}

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    def small(i: int) -> np.ndarray:
        if i not in thumbnails:
            thumbnails[i] = thumbnail(cases[i])
        return thumbnails[i]

    for i in range(len(cases)):
        for j in range(i + 1, len(cases)):
            if root(i) != root(j) and comparable(cases[i], cases[j]) \
                    and correlation(small(i), small(j)) >= THRESHOLD:
                group[root(j)] = root(i)
    groups: dict = {}
    for i in range(len(cases)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())
