"""Intensity normalisation shared by training and inference (spec 6: zero mean, unit variance),
per channel for multi-channel images (as nnU-Net's z-score scheme)."""

import numpy as np

from .errors import CVBMInputError


def normalize_intensity(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Z-score ``image`` over the whole volume and return it as float32.

    Raises :class:`CVBMInputError` for NaN/Inf values; a constant image maps to zeros.
    """
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise CVBMInputError(f"{name} contains {bad} NaN/Inf voxel(s); fix or mask them before use")
    std = float(image.std())
    centred = image - np.float32(image.mean())
    if std < 1e-8:
        return np.zeros_like(image)
    return centred / np.float32(std)


def normalize_channels(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Each channel of a channels-first ``image`` (C, ...) z-scored on its own (float32)."""
    return np.stack([normalize_intensity(channel, name=name) for channel in np.asarray(image)])
