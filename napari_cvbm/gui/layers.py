"""The napari layers a CVBM prediction becomes, and finding them again (by metadata, never by name).

Every layer made here carries ``metadata["cvbm_role"]`` (one of :data:`ROLES`) and
``metadata["cvbm_source"]`` (the image layer's name), and the image layer's scale and translate.
Re-running on the same image updates these layers in place, so the user's display settings
(visibility, opacity, contrast) survive and layers the user made are never touched. A model that
names its classes (``TrainConfig.class_names``) names them on the segmentation layer too.
"""

from typing import Dict, List, Optional, Sequence

import numpy as np
from napari.layers import Image, Labels, Layer

from .._reader import GEOMETRY

SEGMENTATION = "segmentation"
PROB_VIEWS = {"fg": "prob_fg_view", "bg": "prob_bg_view", "mix": "prob_mix_view"}
CONFIDENCE = {"fg": "confidence_fg", "bg": "confidence_bg"}
DISAGREEMENT = "disagreement"
ROLES = (SEGMENTATION, *PROB_VIEWS.values(), *CONFIDENCE.values(), DISAGREEMENT)

PROB_COLORMAP = "inferno"
CONFIDENCE_COLORMAP = "magma"
DISAGREEMENT_COLORMAP = "viridis"


def find_layer(viewer, source: str, role: str) -> Optional[Layer]:
    """The layer this plugin made for image ``source`` in ``role``, or None."""
    return next((layer for layer in viewer.layers
                 if layer.metadata.get("cvbm_source") == source
                 and layer.metadata.get("cvbm_role") == role), None)


def result_layers(viewer, source: str) -> List[Layer]:
    """All layers this plugin made for image ``source``."""
    return [layer for layer in viewer.layers
            if layer.metadata.get("cvbm_source") == source and layer.metadata.get("cvbm_role") in ROLES]


def _put_layer(viewer, image: Image, role: str, layer_type, data: np.ndarray,
               name: str, **display) -> Layer:
    """Update the layer in ``role`` for ``image`` in place, or add it (display settings on adding only)."""
    layer = find_layer(viewer, image.name, role)
    if layer is not None and (type(layer) is not layer_type or layer.data.shape != data.shape):
        viewer.layers.remove(layer)
        layer = None
    if layer is None:
        geometry = {k: image.metadata[k] for k in ("affine", "spacing", GEOMETRY) if k in image.metadata}
        layer = layer_type(data, name=name, scale=image.scale, translate=image.translate,
                           metadata={"cvbm_role": role, "cvbm_source": image.name, **geometry}, **display)
        return viewer.add_layer(layer)
    layer.data = data
    layer.scale, layer.translate = image.scale, image.translate
    if "contrast_limits" in display:
        layer.contrast_limits = display["contrast_limits"]
    return layer


def _map_display(colormap: str, limits, visible: bool) -> dict:
    return dict(colormap=colormap, contrast_limits=limits, blending="additive", visible=visible)


def name_classes(layer: Labels, class_names: Optional[Sequence[str]]) -> None:
    """Tell napari what each label value of ``layer`` is: a features table (an "index" column 0..C-1 and
    a "class" column of names), so its status bar shows the class under the cursor, and
    ``metadata["cvbm_class_names"]``. Without names, both are cleared."""
    if class_names:
        layer.features = {"index": np.arange(len(class_names)), "class": np.asarray(class_names, dtype=object)}
        layer.metadata["cvbm_class_names"] = tuple(class_names)
    else:
        layer.features = {}
        layer.metadata.pop("cvbm_class_names", None)


def show_prediction(viewer, image: Image, prediction, class_names: Optional[Sequence[str]] = None) -> Dict[str, Layer]:
    """Add or refresh the layers of ``prediction`` (a ``core.inference.Prediction``) for ``image``.

    Made: the editable segmentation (its classes named by ``class_names``, the model's, see
    :func:`name_classes`), P(foreground) = 1 - P(class 0) of each computed view, the fg / bg
    confidence maps (same colormap and limits 1/C..1, so they compare directly) and the fg vs bg
    disagreement. Layers of roles this prediction lacks (e.g. a model without a background branch)
    are removed. Returns {role: layer}.
    """
    src = image.name
    num_classes = prediction.fg.shape[0]
    made = {}
    for view, probs in (("fg", prediction.fg), ("bg", prediction.bg), ("mix", prediction.mix)):
        if probs is not None:
            made[PROB_VIEWS[view]] = _put_layer(
                viewer, image, PROB_VIEWS[view], Image, 1.0 - probs[0], f"{src} P(fg) {view} view",
                **_map_display(PROB_COLORMAP, (0.0, 1.0), visible=view == "fg"))
    for view, conf in (("fg", prediction.fg_confidence), ("bg", prediction.bg_confidence)):
        if conf is not None:
            made[CONFIDENCE[view]] = _put_layer(
                viewer, image, CONFIDENCE[view], Image, conf, f"{src} confidence {view} view",
                **_map_display(CONFIDENCE_COLORMAP, (1.0 / num_classes, 1.0), visible=False))
    if prediction.disagreement is not None:
        made[DISAGREEMENT] = _put_layer(
            viewer, image, DISAGREEMENT, Image, prediction.disagreement, f"{src} fg-bg disagreement",
            **_map_display(DISAGREEMENT_COLORMAP, (0.0, 1.0), visible=False))
    seg = _put_layer(viewer, image, SEGMENTATION, Labels, prediction.labels, f"{src} CVBM segmentation",
                     opacity=0.5)
    seg.metadata["cvbm_original"] = prediction.labels.copy()
    name_classes(seg, class_names)
    made[SEGMENTATION] = seg
    for layer in result_layers(viewer, src):
        if layer.metadata["cvbm_role"] not in made:
            viewer.layers.remove(layer)
    return made
