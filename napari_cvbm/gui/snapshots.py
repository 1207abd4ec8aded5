"""Which layers a job may read, and the copies of them it reads.

Both widgets copy what a job needs on the GUI thread before the worker starts, so edits made while
it runs change nothing in it (and nothing in the worker touches a layer). :func:`image_input` is the
one place a layer, or the aligned single-channel layers chosen as the channels of one image, becomes
what the engine reads (``core.channels``: channels first when more than one; an RGB layer's are
red, green, blue).
"""

from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from napari.layers import Image, Labels

from .._reader import GEOMETRY
from ..core.channels import RGB
from ..core.errors import CVBMInputError
from ..core.geometry import check_same_place


class ImageInput(NamedTuple):
    """An image as the engine reads it: its array, spacing (spatial axes) and channel names."""

    array: np.ndarray
    spacing: Tuple[float, ...]
    channel_names: Tuple[str, ...]


def layer_array(layer) -> np.ndarray:
    """The full-resolution data of a layer (level 0 of a multiscale one), as an array view."""
    return np.asarray(layer.data[0] if layer.multiscale else layer.data)


def spatial_shape(layer) -> Tuple[int, ...]:
    """The shape of the layer's full-resolution data without an RGB layer's colour axis."""
    shape = layer_array(layer).shape
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def snapshot(layer) -> np.ndarray:
    """A copy of the layer's full-resolution data."""
    return np.array(layer_array(layer))


def source_images(viewer) -> List[Image]:
    """Image layers a user may segment or train on: those not made by this plugin (probability maps...)."""
    return [layer for layer in viewer.layers if isinstance(layer, Image) and layer.metadata.get("cvbm_role") is None]


def label_layers(viewer) -> List[Labels]:
    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def image_of(viewer, labels: Labels) -> Optional[Image]:
    """The image a labels layer belongs to: its ``cvbm_source``, else the first image of its shape."""
    images = source_images(viewer)
    source = labels.metadata.get("cvbm_source")
    shape = layer_array(labels).shape
    return next((image for image in images if image.name == source), None) or \
        next((image for image in images if spatial_shape(image) == shape), None)


def image_problem(layer) -> Optional[str]:
    """Why image ``layer`` cannot be read as one 2D or 3D image, or None."""
    if layer.multiscale:
        return f"'{layer.name}' is a multiscale (pyramid) image; open a single-resolution image."
    if layer.ndim not in (2, 3):
        return (f"'{layer.name}' has {layer.ndim} dimensions; CVBM segments one 2D slice (y, x) or one "
                "3D volume (z, y, x). Split channels or time points into separate layers first.")
    return None


def _check_channel_layers(layers: Sequence[Image]) -> None:
    """Refuse channel layers that are not single-channel layers aligned with the first."""
    first = layers[0]
    for layer in layers:
        if layer.rgb:
            raise CVBMInputError(f"'{layer.name}' is an RGB image: the channels of one image are "
                                 "single-channel layers")
    for layer in layers[1:]:
        differs = [what for what, ours, theirs in (("shape", spatial_shape(first), spatial_shape(layer)),
                                                   ("scale", first.scale, layer.scale),
                                                   ("translate", first.translate, layer.translate))
                   if len(ours) != len(theirs) or not np.allclose(ours, theirs)]
        if differs:
            raise CVBMInputError(f"'{layer.name}' is not aligned with '{first.name}' (different {' and '.join(differs)}"
                                 "): the channels of one image need the same shape, scale and translate")


def image_input(layers: Sequence[Image], names: Sequence[str] = (), stand_in: bool = False) -> ImageInput:
    """What the engine reads of the image in ``layers``: one layer (an RGB one's red, green, blue) or
    several aligned single-channel layers, the channels ``names`` of one image (numbered when the
    count differs). Copied, or with ``stand_in`` a read-only zero stand-in of its shape (for plans);
    unreadable or missing (None) layers raise CVBMInputError."""
    missing = [i for i, layer in enumerate(layers) if layer is None]
    if missing:
        channel = names[missing[0]] if missing[0] < len(names) else str(missing[0])
        raise CVBMInputError(f"choose the layer of channel '{channel}' of '{layers[0].name}'")
    for layer in layers:
        problem = image_problem(layer)
        if problem:
            raise CVBMInputError(problem)
    first = layers[0]
    if len(layers) > 1:
        _check_channel_layers(layers)
        channels = tuple(names) if len(names) == len(layers) else tuple(str(i) for i in range(len(layers)))
        shape = (len(layers), *spatial_shape(first))
    elif first.rgb:
        channels, shape = RGB, (3, *spatial_shape(first))
    else:
        channels, shape = (), spatial_shape(first)
    spacing = tuple(float(s) for s in first.scale)
    if stand_in:
        return ImageInput(np.broadcast_to(np.float32(0), shape), spacing, channels)
    if len(layers) > 1:
        array = np.stack([layer_array(layer) for layer in layers]).astype(np.float32, copy=False)
    elif first.rgb:  # channels last in napari, alpha dropped
        array = np.moveaxis(layer_array(first)[..., :3], -1, 0).astype(np.float32)
    else:
        array = snapshot(first)
    return ImageInput(array, spacing, channels)


def field_of_view(layer, image: Image) -> Optional[np.ndarray]:
    """The field-of-view mask (non-zero = inside; any colour of an RGB layer) that ``layer`` (a labels
    or image layer, or None) gives ``image``; raises CVBMInputError when it does not fit the image."""
    if layer is None:
        return None
    data = layer_array(layer)
    inside = (data != 0).any(-1) if getattr(layer, "rgb", False) else data != 0
    if inside.shape != spatial_shape(image):
        raise CVBMInputError(f"field of view '{layer.name}' has shape {inside.shape} but image '{image.name}' "
                             f"has shape {spatial_shape(image)}: they must match")
    check_same_place(image.metadata.get(GEOMETRY), layer.metadata.get(GEOMETRY),
                     f"field of view '{layer.name}' vs image '{image.name}'")
    return inside
