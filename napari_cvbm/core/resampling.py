"""Resampling between an image's own grid and a model's working spacing (the plan, ``core.planning``).

Images are resampled linearly, label maps by nearest neighbour, probabilities back onto the
image's grid linearly (so labels come from the argmax on the original grid). A volume labelled
only on some slices keeps every annotated slice: each lands on its nearest working slice, which
takes that slice's labels rather than an interpolation with unannotated neighbours.
"""

from dataclasses import replace
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .data import Case

Spacing = Tuple[float, ...]


def zoom_factors(spacing: Sequence[float], target: Optional[Sequence[float]]) -> Optional[Tuple[float, ...]]:
    """Per-axis factors that take voxels of ``spacing`` to ``target`` (None when already there)."""
    if target is None or not len(spacing):
        return None
    factors = tuple(float(s) / float(t) for s, t in zip(spacing, target))
    return None if np.allclose(factors, 1.0, rtol=1e-3) else factors


def working_shape(shape: Sequence[int], factors: Sequence[float]) -> Tuple[int, ...]:
    return tuple(max(1, int(round(n * f))) for n, f in zip(shape, factors))


def resample_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``image`` resampled linearly onto the spatial ``shape`` (grid centres aligned); leading axes
    beyond it (channels) are kept."""
    lead = image.ndim - len(shape)
    factors = [1.0] * lead + [t / s for t, s in zip(shape, image.shape[lead:])]
    return ndimage.zoom(image.astype(np.float32, copy=False), factors, order=1, mode="nearest", grid_mode=True)


def _source_indices(n_in: int, n_out: int, keep: Sequence[int] = ()) -> np.ndarray:
    """For each output index, the nearest input index; every index in ``keep`` is the source of the
    output index nearest to it (annotated slices are never dropped)."""
    scale = n_in / n_out
    source = np.clip(np.floor((np.arange(n_out) + 0.5) * scale).astype(int), 0, n_in - 1)
    for i in keep:
        source[min(n_out - 1, int((i + 0.5) / scale))] = i
    return source


def resample_labels(label: np.ndarray, shape: Sequence[int], annotated: Optional[np.ndarray] = None):
    """(label, annotated) on ``shape`` by nearest neighbour; slices of axis 0 that hold annotated
    voxels all survive (see the module docstring)."""
    keep = np.flatnonzero(annotated.reshape(annotated.shape[0], -1).any(1)) if annotated is not None else ()
    index = np.ix_(*[_source_indices(n, m, keep if axis == 0 else ()) for axis, (n, m)
                     in enumerate(zip(label.shape, shape))])
    return label[index], None if annotated is None else annotated[index]


def resample_case(case: Case, spacing: Optional[Spacing]) -> Case:
    """``case`` at ``spacing`` (image linear, labels and masks nearest); unchanged when it
    is there already or has no spacing."""
    factors = zoom_factors(case.spacing, spacing)
    if factors is None:
        return case
    shape = working_shape(case.shape, factors)
    label, annotated = (None, None) if case.label is None else resample_labels(case.label, shape, case.annotated)
    valid = None if case.valid is None else resample_labels(case.valid, shape)[0]
    return replace(case, image=resample_image(case.image, shape), label=label, annotated=annotated, valid=valid,
                   spacing=tuple(float(s) for s in spacing))


def resample_probabilities(probs: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(C, *S) probabilities resampled linearly onto ``shape``."""
    if probs.shape[1:] == tuple(shape):
        return probs
    mode = "trilinear" if probs.ndim == 4 else "bilinear"
    return F.interpolate(torch.from_numpy(probs)[None], size=tuple(shape), mode=mode,
                         align_corners=False)[0].numpy()
