"""napari writers: one image or labels layer to NIfTI (.nii, .nii.gz), TIFF (.tif, .tiff) or PNG.

A layer that still lies on the grid of the file it came from (or of the image it was segmented
from: ``metadata["cvbm_geometry"]``, same shape and scale) is written onto that grid: the source's
NIfTI header, singleton axes and units (see core.geometry). Any other layer is written with its
``scale`` as voxel spacing (z, y, x). Labels are stored as integers (smallest fitting type), images
as float32 or their integer type; an RGB(A) image layer as an 8-bit RGB(A) TIFF or PNG. PNG holds
2D integer data without a physical pixel size only (core.io refuses the rest). A failure is shown
as a napari notification and returns ``[]``; nothing is raised into napari.
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
        rgb = bool(meta.get("rgb")) and not labels
        array = _array(path, data, meta, labels, rgb)
        geometry = _geometry(meta, array[0] if rgb else array)
        spacing = None if geometry is not None else meta.get("scale")
        written = io.write_image(path, array, spacing=spacing, geometry=geometry, rgb=rgb)
    except Exception as error:  # noqa: BLE001 -- a writer must not raise into napari
        show_error(error_message(error, "write", path))
        return []
    return [str(written)]


def _array(path: str, data, meta: dict, labels: bool, rgb: bool) -> np.ndarray:
    """The layer's full-resolution array (an RGB layer's channels first, as core.io takes them)."""
    array = np.asarray(data[0] if meta.get("multiscale") else data)
    if rgb:
        if array.ndim < 3 or array.shape[-1] not in (3, 4):
            raise CVBMInputError(f"Cannot write {path}: RGB layer data has shape {array.shape}; "
                                 "expected 3 or 4 channels last")
        return np.moveaxis(array, -1, 0)
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
