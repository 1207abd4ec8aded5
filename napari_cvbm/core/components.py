"""Largest-connected-component cleaning per class (spec 5 pseudo-labels, spec 7 post-processing)."""

import numpy as np
from scipy import ndimage


def largest_component_per_class(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Keep, for every foreground class, only its largest connected component.

    ``labels`` is an integer map of any dimensionality (2D slice or 3D volume); voxels of
    removed components become background (0). Full connectivity (8 in 2D, 26 in 3D).
    """
    labels = np.asarray(labels)
    cleaned = np.zeros_like(labels)
    structure = np.ones((3,) * labels.ndim, dtype=bool)
    for c in range(1, num_classes):
        components, count = ndimage.label(labels == c, structure=structure)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        cleaned[components == sizes.argmax()] = c
    return cleaned
