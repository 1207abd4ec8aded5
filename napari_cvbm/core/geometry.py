"""Where an image's voxels lie in space, as read from its file, so that every result derived from
the image is written back onto the same grid.

A :class:`Geometry` holds what a file said about its grid: the spatial shape with its singleton
axes, the voxel spacing in millimetres, the unit the file used and, for NIfTI, a copy of the whole
header (qform and sform with their codes, shears, units). A result written with the geometry of
its image gets that header back unchanged, so every viewer (ITK-SNAP, 3D Slicer, napari) places
image and result identically, whichever transform it prefers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .channels import spatial_shape
from .errors import CVBMInputError

# Millimetres per unit, keyed by the unit names NIfTI, ImageJ and OME use.
MM_PER_UNIT = {
    "meter": 1000.0, "m": 1000.0, "cm": 10.0, "centimeter": 10.0, "mm": 1.0, "millimeter": 1.0,
    "micron": 1e-3, "microns": 1e-3, "µm": 1e-3, "μm": 1e-3, "um": 1e-3, "\\u00b5m": 1e-3,
    "micrometer": 1e-3, "nm": 1e-6, "nanometer": 1e-6, "inch": 25.4, "in": 25.4,
}
PIXEL_UNITS = ("", "pixel", "pixels", "px", "unknown")  # no physical unit: spacing in pixels


def canonical_unit(unit: str | None, path) -> str | None:
    """``unit`` under one name per unit ("micron" for µm, um...), or None when it is no physical unit."""
    key = (unit or "").strip().lower()
    if key in PIXEL_UNITS:
        return None
    factor = mm_per_unit(key, path)
    return next(name for name in ("mm", "micron", "cm", "inch", "nm", "meter") if MM_PER_UNIT[name] == factor)


def mm_per_unit(unit: str | None, path) -> float:
    """Millimetres in one ``unit``; 1.0 for files that give no unit (spacing stays in pixels)."""
    key = (unit or "").strip().lower()
    if key in PIXEL_UNITS:
        return 1.0
    if key not in MM_PER_UNIT:
        raise CVBMInputError(f"{path}: unknown spatial unit {unit!r}; use one of mm, micron, cm, m, inch")
    return MM_PER_UNIT[key]


@dataclass(frozen=True)
class Geometry:
    """The voxel grid of an image file.

    ``spatial_shape`` is the file's spatial shape in array order (z, y, x) / (y, x) *with* its
    singleton axes; the image array holds the non-singleton ones. ``spacing`` is in mm (in pixels
    when ``unit`` is None) for the non-singleton axes. ``nifti_header`` is the source's NIfTI header.
    """

    spatial_shape: tuple[int, ...]
    spacing: tuple[float, ...]
    unit: str | None = "mm"
    nifti_header: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the image array (singleton axes squeezed)."""
        return tuple(s for s in self.spatial_shape if s > 1)

    @property
    def affine(self) -> np.ndarray | None:
        """NIfTI voxel (x, y, z) -> world transform in the file's unit (nibabel's ``img.affine``), or
        None for TIFF."""
        header = self.nifti_header
        return None if header is None else np.array(header.get_best_affine(), dtype=np.float64)

    @property
    def affine_mm(self) -> np.ndarray | None:
        """:attr:`affine` with the world in mm."""
        affine = self.affine
        if affine is not None:
            affine[:3] *= mm_per_unit(self.unit, "header")
        return affine

    def fits(self, array: np.ndarray) -> bool:
        """Whether ``array`` (a result of this image) lies on this grid."""
        return tuple(array.shape) == self.shape

    def unsqueeze(self, array: np.ndarray) -> np.ndarray:
        """``array`` with the file's singleton spatial axes put back."""
        return np.asarray(array).reshape(self.spatial_shape)


def check_aligned(image, labels, image_path, label_path) -> None:
    """Raise :class:`CVBMInputError` unless ``labels`` lies on the voxel grid of ``image`` (both
    :class:`~.io.ImageData`): same spatial shape (an image's channels aside), spacing and world
    placement (:func:`check_same_place`)."""
    name = f"{Path(image_path).name} vs {Path(label_path).name}"
    shape = spatial_shape(image.array, image.channels)
    if labels.array.shape != shape:
        raise CVBMInputError(f"label shape {labels.array.shape} does not match image shape {shape} ({name})")
    if not np.allclose(labels.spacing, image.spacing, rtol=1e-3):
        raise CVBMInputError(f"label spacing {tuple(labels.spacing)} does not match image spacing "
                             f"{tuple(image.spacing)} ({name})")
    check_same_place(image.geometry, labels.geometry, name)


def check_same_place(image: Geometry | None, labels: Geometry | None, name: str) -> None:
    """Raise :class:`CVBMInputError` when both grids carry a voxel-to-world transform (NIfTI) and
    these differ in orientation or origin (compared in mm)."""
    ours = image.affine_mm if image else None
    theirs = labels.affine_mm if labels else None
    if ours is None or theirs is None or np.allclose(ours, theirs, rtol=1e-5, atol=1e-3):
        return
    if np.allclose(ours[:3, :3], theirs[:3, :3], rtol=1e-5, atol=1e-6):
        what = f"origin differs by {np.linalg.norm(ours[:3, 3] - theirs[:3, 3]):.3g} mm"
    else:
        what = "orientation differs"
    raise CVBMInputError(f"labels do not lie on the image grid: {what} ({name}; the NIfTI affines must "
                         "match, as ITK-SNAP and 3D Slicer require)")
