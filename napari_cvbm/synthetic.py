"""Deterministic synthetic organ volumes (numpy and scipy.ndimage only; importable headless).

Each case is an MRI-like crop (z, y, x) = (48, 64, 64) at spacing (1.5, 1.0, 1.0) mm holding one
smooth organ-like blob (label 1) among similar-intensity neighbours, darker vessels and tissue
texture, with partial-volume edges, blur, a multiplicative bias field and Rician noise.
``sample_data/generate.py`` writes these cases to :data:`SAMPLE_DATA`, the package folder that
ships in the wheel and that ``cvbm demo`` and the napari sample-data commands read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

SAMPLE_DATA = Path(__file__).resolve().parent / "sample_data"  # labeled/, unlabeled/, test/
SEED = 20240917
SHAPE = (48, 64, 64)  # (z, y, x)
SPACING = (1.5, 1.0, 1.0)  # mm, same order
SUPERSAMPLE = 2  # shapes are drawn on a 2x finer grid, then averaged: partial-volume edges
# split name -> (first case number, number of cases, has labels)
SPLITS = {"labeled": (1, 3, True), "unlabeled": (4, 8, False), "test": (12, 2, True)}


def _grid(shape, spacing, ss):
    """Physical coordinates (mm) of the voxel centres of the ss-times finer grid, shape (3, ...)."""
    axes = [(np.arange(n * ss) + 0.5) / ss * s for n, s in zip(shape, spacing)]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def _rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _smooth_field(rng, points, n_modes=8, wavelength=(25.0, 60.0)):
    """Low-frequency random field (about unit std) as a sum of random plane waves."""
    field = np.zeros(points.shape[1:])
    for _ in range(n_modes):
        direction = rng.normal(size=3)
        k = 2 * np.pi / rng.uniform(*wavelength) * direction / np.linalg.norm(direction)
        phase = np.tensordot(k, points, axes=1) + rng.uniform(0, 2 * np.pi)
        field += np.sin(phase)
    return field * np.sqrt(2.0 / n_modes)


def _blob(rng, points, centre, radii, bumpiness):
    """Fine-grid mask of a randomly oriented ellipsoid deformed by low-frequency noise."""
    local = np.tensordot(_rotation(rng).T, points - np.reshape(centre, (3, 1, 1, 1)), axes=1)
    radius = np.sqrt(sum((local[i] / radii[i]) ** 2 for i in range(3)))
    return radius - 1 + bumpiness * _smooth_field(rng, points, n_modes=6, wavelength=(20.0, 45.0)) < 0


def _tube(rng, points, extent, radius):
    """Fine-grid mask of a gently curved vessel crossing the volume."""
    start = rng.uniform(0, 1, 3) * extent
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    rel = points - np.reshape(start, (3, 1, 1, 1))
    along = np.tensordot(direction, rel, axes=1)
    across = rel - direction.reshape(3, 1, 1, 1) * along
    wobble = 1 + 0.3 * _smooth_field(rng, points, n_modes=3, wavelength=(30.0, 60.0))
    return np.sqrt((across**2).sum(0)) < radius * wobble


def _largest_component(mask):
    """The largest connected part of ``mask``, holes filled: one organ, not islands."""
    components, count = ndimage.label(mask)
    if count > 1:
        mask = components == np.argmax(np.bincount(components.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(mask)


def _downsample(mask, ss):
    z, y, x = (n // ss for n in mask.shape)
    return mask.reshape(z, ss, y, ss, x, ss).mean(axis=(1, 3, 5))


def make_case(rng) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case: (image as uint16 MRI-like intensities, label uint8), both (z, y, x)."""
    extent = np.multiply(SHAPE, SPACING)
    fine = _grid(SHAPE, SPACING, SUPERSAMPLE)
    coarse = _grid(SHAPE, SPACING, 1)

    radii = rng.uniform([16, 18, 18], [20, 23, 23])
    margin = radii.max() + 2  # any orientation stays inside the volume
    centre = rng.uniform(margin, extent - margin)
    organ_fine = _largest_component(_blob(rng, fine, centre, radii, bumpiness=rng.uniform(0.12, 0.25)))
    organ = _downsample(organ_fine, SUPERSAMPLE)
    label = (organ >= 0.5).astype(np.uint8)

    tissue = 300.0
    contrast = rng.uniform(1.45, 1.6)
    image = tissue * (1 + 0.05 * _smooth_field(rng, coarse, wavelength=(6.0, 15.0)))
    for _ in range(rng.integers(3, 6)):  # neighbouring structures of similar brightness
        r = rng.uniform(6, 13, 3)
        occupancy = _downsample(_blob(rng, fine, rng.uniform(0, 1, 3) * extent, r, 0.25), SUPERSAMPLE)
        value = tissue * contrast * rng.uniform(0.85, 1.05)
        image = image * (1 - occupancy) + value * occupancy
    for _ in range(rng.integers(1, 4)):  # darker vessels
        occupancy = _downsample(_tube(rng, fine, extent, rng.uniform(1.5, 3.5)), SUPERSAMPLE)
        image = image * (1 - occupancy) + tissue * rng.uniform(0.4, 0.7) * occupancy
    organ_texture = 1 + 0.05 * _smooth_field(rng, coarse, wavelength=(5.0, 12.0))
    image = image * (1 - organ) + tissue * contrast * organ_texture * organ

    image = ndimage.gaussian_filter(image, sigma=(0.5, 0.8, 0.8))  # scanner point spread
    image *= np.exp(0.1 * _smooth_field(rng, coarse, n_modes=4, wavelength=(80.0, 160.0)))
    sigma = 0.07 * tissue
    real = image + rng.normal(0, sigma, SHAPE)
    imag = rng.normal(0, sigma, SHAPE)
    image = np.sqrt(real**2 + imag**2)  # Rician magnitude noise
    return np.round(image).clip(0, 65535).astype(np.uint16), label


def case_name(number: int) -> str:
    """File/case name of case ``number``, e.g. ``case_001``."""
    return f"case_{number:03d}"


def generate_case(number: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) of case ``number``; the label exists even for cases of the unlabeled split."""
    return make_case(np.random.default_rng([SEED, number]))


def generate_all():
    """Yield (split, case name, image, label or None) for every case, deterministically."""
    for split, (first, count, labeled) in SPLITS.items():
        for number in range(first, first + count):
            image, label = generate_case(number)
            yield split, case_name(number), image, (label if labeled else None)
