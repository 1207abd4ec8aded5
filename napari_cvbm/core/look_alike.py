"""Volumes that look alike: frames of one scan (cine MRI's end-diastolic and end-systolic frames,
time points, repeated acquisitions) or copies. A held-out check that trains on one of them and
checks on the other measures how well the model recalls an image, not how it does on another scan
(spec 6: select on data kept apart from training), so ``core.holdout`` keeps look-alikes together.

Two 3D images look alike when they share the spatial shape, voxel spacing and channels, and their
thumbnails (at most ``THUMBNAIL`` voxels, z-scored) correlate at ``THRESHOLD`` or more. On the ACDC
copy (``python benchmarks/look_alike.py DATA/acdc``) the two frames of one patient correlate at 0.86
to 1.00 (80 pairs) and volumes of two patients of one shape at most 0.63 (292 pairs), apart from two
patients whose images are identical (1.00). 2D images are never grouped: photographs of one kind
(fundus, all behind the same black border) correlate at 0.94 and more between different eyes.
"""

from typing import List, Sequence

import numpy as np
from skimage.transform import resize

from .channels import channels_first
from .data import Case

THUMBNAIL = (12, 24, 24)  # (z, y, x), at most
THRESHOLD = 0.75


def thumbnail(case: Case) -> np.ndarray:
    """``case``'s image on at most ``THUMBNAIL`` voxels a channel, z-scored, flattened."""
    image = channels_first(np.asarray(case.image, np.float32), case.channels)
    shape = tuple(min(s, t) for s, t in zip(case.shape, THUMBNAIL))
    small = resize(image, image.shape[:1] + shape, order=1, anti_aliasing=True, preserve_range=True).ravel()
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
