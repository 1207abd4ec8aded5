"""napari reader for NIfTI (.nii, .nii.gz), TIFF (.tif, .tiff), PNG and JPEG (.png, .jpg, .jpeg)
images and label maps.

:func:`napari_get_reader` accepts a supported file (any letter case), a list of them, or a folder
holding some; each file becomes one layer (sorted by name), named after its case and scaled by its
voxel spacing in (z, y, x) order. A file opens as a labels layer when it holds at most 64 distinct
non-negative integer values (integer type, or float type with whole values) *and* its folder
(labels/, labelsTr/, masks/, segmentations/, fov/, roi/ ...) or its name (label, seg, mask, gt) says
it is a label map; anything else opens as an image: a colour file (RGB PNG/JPEG/TIFF) as one RGB
layer (``rgb=True``, channels last, uint8 kept), a file with channels or time frames as one layer
per channel (named after the channels), any other as float32. Each layer keeps the file's grid in
``metadata["cvbm_geometry"]`` (and, for NIfTI, the affine in ``metadata["affine"]``) so that
:mod:`napari_cvbm._writer` writes results back onto the same grid, header and all.

Unreadable content never raises into napari. Each file that fails is reported with an error
notification carrying core.io's one-line message, and the other files still open. When no file
could be read, the reader returns napari's "opened, but no layers" value ``[(None,)]``: napari
then adds nothing and shows nothing else. Returning ``[]`` (or ``None``) instead makes napari raise
its own generic "returned no data" / "refused the file" error on top of ours, which in the GUI
becomes a second notification or a reader-choice dialog that hides the actual cause.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error

from .core.channels import RGB
from .core.classes import MAX_INFERRED_CLASSES, label_values
from .core.errors import CVBMInputError
from .core.io import IMAGE_EXTENSIONS, ImageData, list_images, read_image, read_labels, strip_extension

LABEL_ROLE = "label"  # metadata["cvbm_role"] of label maps opened from files
GEOMETRY = "cvbm_geometry"  # metadata key of the file's core.geometry.Geometry, for the writers
_LABEL_FOLDER = re.compile(r"labels?(tr|ts)?|masks?|segmentations?|segs?|gts?|ground_?truths?|fovs?|rois?", re.I)
_LABEL_NAME = re.compile(r"label|seg|mask|(?<![a-z])gt(?![a-z])", re.I)


def napari_get_reader(path):
    """Return :func:`read` when ``path`` names supported files only (see module doc), else None."""
    return read if _files(path) else None


def read(path) -> list[tuple]:
    """LayerData tuples for the files named by ``path``; failures are notified, never raised."""
    files = _files(path)
    if not files:  # they vanished since napari_get_reader looked
        show_error(f"No {', '.join(IMAGE_EXTENSIONS)} files found at {path}")
    layers = []
    for file in files:
        try:
            layers.append(_layer(file))
        except Exception as error:  # noqa: BLE001 -- a reader must not raise into napari
            show_error(error_message(error, "read", file))
    return layers or [(None,)]  # napari's null-layer value: opened, but no layer to add


def error_message(error: BaseException, action: str, path) -> str:
    """The user-facing message for ``error`` (core's own one-line message when it has one)."""
    if isinstance(error, CVBMInputError):
        return str(error)
    if isinstance(error, MemoryError):
        return f"Not enough memory to {action} {path}"
    return f"Cannot {action} {path}: {type(error).__name__}: {error}"


def _files(path) -> list[Path]:
    """The files ``path`` (a file, a folder, or a list of them) names; [] if any is unsupported."""
    try:
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        files = []
        for item in map(Path, paths):
            if item.is_dir():
                found = list_images(item)
            else:
                found = [item] if item.is_file() and item.name.lower().endswith(IMAGE_EXTENSIONS) else []
            if not found:
                return []
            files += found
        return files
    except (OSError, TypeError, CVBMInputError):  # unlistable folder, odd path objects
        return []


def _layer(file: Path) -> tuple:
    """One LayerData tuple: labels when ``file`` looks like a label map, else an image."""
    labels = _label_map(file) if _named_like_labels(file) else None
    data = labels if labels is not None else read_image(file, channel="all")
    metadata = {"spacing": data.spacing, GEOMETRY: data.geometry}
    if data.affine is not None:
        metadata["affine"] = data.affine
    if labels is not None:
        metadata["cvbm_role"] = LABEL_ROLE
    name = strip_extension(file)
    kwargs = {"name": name, "scale": data.spacing, "metadata": metadata}
    array = data.array
    if data.channel_names == RGB:  # napari's RGB: one layer, channels last
        array, kwargs["rgb"] = _rgb(array), True
    elif data.channels > 1:  # channels or time frames: one layer each, which the widgets can use
        kwargs["channel_axis"] = 0
        kwargs["name"] = [f"{name} {channel}" for channel in data.channel_names]
    return array, kwargs, "image" if labels is None else "labels"


def _rgb(array: np.ndarray) -> np.ndarray:
    """A (3, ...) colour image channels last, as uint8 (or uint16) when its values are, so that
    napari shows its true colours."""
    array = np.moveaxis(array, 0, -1)
    if np.isfinite(array).all() and (array == np.round(array)).all() and array.min() >= 0:
        for dtype in (np.uint8, np.uint16):
            if array.max() <= np.iinfo(dtype).max:
                return np.ascontiguousarray(array, dtype=dtype)
    return np.ascontiguousarray(array)


def _named_like_labels(file: Path) -> bool:
    return bool(_LABEL_FOLDER.fullmatch(file.parent.name) or _LABEL_NAME.search(strip_extension(file)))


def _label_map(file: Path) -> ImageData | None:
    """``file`` read as labels if it holds few distinct non-negative integers, else None."""
    try:
        labels = read_labels(file)
    except CVBMInputError:  # fractional, negative or NaN values, or unreadable: read_image decides
        return None
    return labels if label_values(labels.array).size <= MAX_INFERRED_CLASSES else None
