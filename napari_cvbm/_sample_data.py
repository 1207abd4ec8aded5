"""napari sample data: the first labeled and the first unlabeled synthetic organ case.

The volumes are read from the package's ``sample_data/`` folder (:data:`napari_cvbm.synthetic.SAMPLE_DATA`),
which ships in the wheel.
"""

from __future__ import annotations

import numpy as np

from . import synthetic
from ._reader import LABEL_ROLE
from .core.io import read_image, read_labels


def labeled_sample() -> list[tuple]:
    """[image, labels] LayerData of the first labeled case (e.g. "case_001", "case_001 label")."""
    name, image, label, spacing = _case("labeled")
    label_meta = {"cvbm_role": LABEL_ROLE, "spacing": spacing}
    return [
        _layer(image, name, spacing, "image"),
        _layer(label, f"{name} label", spacing, "labels", metadata=label_meta),
    ]


def unlabeled_sample() -> list[tuple]:
    """[image] LayerData of the first unlabeled case (e.g. "case_004 (unlabeled)")."""
    name, image, _, spacing = _case("unlabeled")
    return [_layer(image, f"{name} (unlabeled)", spacing, "image")]


def _layer(data: np.ndarray, name: str, spacing, layer_type: str, metadata=None) -> tuple:
    metadata = metadata or {"spacing": spacing}
    return data, {"name": name, "scale": spacing, "metadata": metadata}, layer_type


def _case(split: str) -> tuple[str, np.ndarray, np.ndarray, tuple[float, ...]]:
    """(name, float32 image, uint8 label or None, spacing) of the first case of ``split``."""
    number, _, has_labels = synthetic.SPLITS[split]
    name = synthetic.case_name(number)
    folder, file = synthetic.SAMPLE_DATA / split, f"{name}.nii.gz"
    image = read_image(folder / "images" / file)
    label = read_labels(folder / "labels" / file).array if has_labels else None
    return name, image.array, label, image.spacing
