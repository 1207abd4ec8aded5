"""napari writers: one image or labels layer to NIfTI (.nii, .nii.gz) or TIFF (.tif, .tiff).

A layer that still lies on the grid of the file it came from (or of the image it was segmented
from: ``metadata["cvbm_geometry"]``, same shape and scale) is written onto that grid: the source's
NIfTI header, singleton axes and units (see core.geometry). Any other layer is written with its
``scale`` as voxel spacing (z, y, x). Labels are stored as integers (smallest fitting type), images
as float32 or their integer type. A failure is shown as a napari notification and returns ``[]``;
nothing is raised into napari.
"""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import show_error

from ._reader import GEOMETRY, error_message
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
        geometry = _geometry(meta, array)
        spacing = None if geometry is not None else meta.get("scale")
        written = io.write_image(path, array, spacing=spacing, geometry=geometry)
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


def _geometry(meta: dict, array: np.ndarray):
    """The source file's geometry while the layer still lies on it (same shape and scale), else None."""
    geometry = (meta.get("metadata") or {}).get(GEOMETRY)
    if not isinstance(geometry, io.Geometry) or not geometry.fits(array):
        return None
    scale = meta.get("scale")
    return geometry if scale is None or np.allclose(scale, geometry.spacing, rtol=1e-4) else None
