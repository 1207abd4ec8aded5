"""napari writers: one image or labels layer to NIfTI (.nii, .nii.gz) or TIFF (.tif, .tiff).

The layer's ``scale`` is stored as voxel spacing (z, y, x). A NIfTI header reuses the affine that
:mod:`napari_cvbm._reader` kept in ``metadata["affine"]`` while it still fits the layer (4x4,
finite, voxel sizes equal to the scale, same number of axes as when read); otherwise the scale
alone defines the header. Labels are stored as integers (smallest fitting type), images as float32
or their integer type. A failure is shown as a napari notification and returns ``[]``; nothing is
raised into napari.
"""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_error

from ._reader import error_message
from .core import io
from .core.errors import CVBMInputError


def write_image(path: str, data, meta: dict) -> list[str]:
    """Write an image layer; returns the written path, or [] after notifying a failure."""
    return _write(path, data, meta, labels=False)


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write a labels layer as integers; returns the written path, or [] after notifying a failure."""
    return _write(path, data, meta, labels=True)


def _write(path: str, data, meta: dict, *, labels: bool) -> list[str]:
    try:
        array = _array(path, data, meta, labels)
        spacing = meta.get("scale")
        written = io.write_image(path, array, spacing=spacing, affine=_affine(meta, array.ndim, spacing))
    except Exception as error:  # noqa: BLE001 -- a writer must not raise into napari
        show_error(error_message(error, "write", path))
        return []
    return [str(written)]


def _array(path: str, data, meta: dict, labels: bool) -> np.ndarray:
    """The layer's full-resolution array, checked for what NIfTI/TIFF volumes can hold."""
    if meta.get("rgb"):
        raise CVBMInputError(f"Cannot write {path}: RGB images are not supported (expected one channel)")
    array = np.asarray(data[0] if meta.get("multiscale") else data)
    if labels and array.dtype.kind not in "biu":
        raise CVBMInputError(f"Cannot write labels to {path}: data type {array.dtype} is not integer")
    return array


def _affine(meta: dict, ndim: int, spacing) -> np.ndarray | None:
    """``metadata["affine"]`` when it still fits an array of ``ndim`` axes at ``spacing``, else None."""
    metadata = meta.get("metadata") or {}
    try:
        affine = np.asarray(metadata.get("affine"), dtype=np.float64)
        read_ndim = len(metadata.get("spacing", ()))  # number of axes when the file was read
        spacing = np.asarray(np.ones(ndim) if spacing is None else spacing, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or read_ndim != ndim or spacing.shape != (ndim,):
        return None
    voxel_sizes = np.linalg.norm(affine[:3, :ndim], axis=0)[::-1]  # NIfTI (x, y, z) -> (z, y, x)
    return affine if np.allclose(voxel_sizes, spacing, rtol=1e-4) else None
