"""Which layers a job may read, and the copies of them it reads.

Both widgets copy what a job needs on the GUI thread before the worker starts, so edits made while
it runs change nothing in it (and nothing in the worker touches a layer).
"""

from typing import List, Optional

import numpy as np
from napari.layers import Image, Labels


def layer_array(layer) -> np.ndarray:
    """The full-resolution data of a layer (level 0 of a multiscale one), as an array view."""
    return np.asarray(layer.data[0] if layer.multiscale else layer.data)


def snapshot(layer) -> np.ndarray:
    """A copy of the layer's full-resolution data."""
    return np.array(layer_array(layer))


def shape_only(layer) -> np.ndarray:
    """A read-only stand-in of the layer's full-resolution data with its shape and no memory of its own."""
    return np.broadcast_to(np.float32(0), layer_array(layer).shape)


def source_images(viewer, rgb: bool = False) -> List[Image]:
    """Image layers a user may segment or train on: not made by this plugin (probability maps...),
    and RGB ones only with ``rgb``."""
    return [layer for layer in viewer.layers if isinstance(layer, Image) and (rgb or not layer.rgb)
            and layer.metadata.get("cvbm_role") is None]


def label_layers(viewer) -> List[Labels]:
    return [layer for layer in viewer.layers if isinstance(layer, Labels)]


def image_of(viewer, labels: Labels) -> Optional[Image]:
    """The image a labels layer belongs to: its ``cvbm_source``, else the first image of its shape."""
    images = source_images(viewer)
    source = labels.metadata.get("cvbm_source")
    shape = layer_array(labels).shape
    return next((image for image in images if image.name == source), None) or \
        next((image for image in images if layer_array(image).shape == shape), None)
