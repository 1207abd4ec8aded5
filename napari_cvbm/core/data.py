"""Training cases and the random patch/slice sampler with rot90/flip/rotation augmentation (spec 6)."""

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

from .classes import interpret_labels
from .errors import CVBMInputError
from .intensity import normalize_intensity


@dataclass
class Case:
    """One image (z-scored float32) with its optional labels and annotated-voxel mask.

    ``annotated`` marks the voxels whose labels count (a partly corrected volume); None
    means every voxel of a labeled case is annotated.
    """

    name: str
    image: np.ndarray
    label: Optional[np.ndarray] = None
    annotated: Optional[np.ndarray] = None
    spacing: Tuple[float, ...] = ()


def make_case(name, image, label=None, annotated=None, spacing=None, num_classes=None) -> Case:
    """Validate and normalise one case; bad input raises :class:`CVBMInputError`."""
    image = np.asarray(image)
    if image.ndim not in (2, 3) or min(image.shape) < 1:
        raise CVBMInputError(f"{name}: image has shape {image.shape}; expected a 2D or 3D scalar image")
    normalized = normalize_intensity(image, name=name)
    if label is not None:
        label = np.asarray(label)
        if label.shape != image.shape:
            raise CVBMInputError(f"{name}: label shape {label.shape} does not match image shape {image.shape}")
        if not np.issubdtype(label.dtype, np.integer):
            if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
                raise CVBMInputError(f"{name}: labels must be integer class indices")
        label = label.astype(np.int64)
        if label.min() < 0 or (num_classes is not None and label.max() >= num_classes):
            raise CVBMInputError(
                f"{name}: label values {int(label.min())}..{int(label.max())} are outside 0..{num_classes - 1}"
                if num_classes else f"{name}: negative label values")
        if annotated is not None:
            annotated = np.asarray(annotated, dtype=bool)
            if annotated.shape != image.shape:
                raise CVBMInputError(f"{name}: annotated mask shape {annotated.shape} does not match image "
                                     f"{image.shape}")
            if not annotated.any():
                raise CVBMInputError(f"{name}: no voxel is marked as annotated")
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * image.ndim
    return Case(name, normalized, label, annotated, spacing)


def annotated_slices(case: Case) -> np.ndarray:
    """Indices along axis 0 holding at least one annotated voxel (all slices if fully annotated)."""
    if case.annotated is None:
        return np.arange(case.image.shape[0])
    return np.flatnonzero(case.annotated.reshape(case.annotated.shape[0], -1).any(1))


def _resize(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    factors = [t / s for t, s in zip(shape, array.shape)]
    return ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)


class PatchSampler:
    """Draws random training samples from a list of cases.

    3D: random crops of ``patch_size`` (volumes smaller than a patch are zero-padded).
    2D: random slices along axis 0, resized to ``slice_size`` or randomly cropped to
    ``patch_size``. Labeled cases draw only crops/slices that hold annotated voxels.
    Augmentation (spec 6, as the release's ACDC pipeline): with probability ``rot_flip_probability``
    a random in-plane rot90 (square planes) and a random flip; otherwise, half of the time, an
    in-plane rotation by up to ``rotate_degrees``. Samples left as they are keep the images'
    handedness: with flips on every sample a model cannot tell left from right structures
    (on ACDC it then puts the right ventricle on the wrong side of the left one).
    """

    def __init__(self, cases: List[Case], dim: int, patch_size, slice_size=None,
                 augment: bool = True, rng: Optional[np.random.Generator] = None,
                 rot_flip_probability: float = 0.5, rotate_degrees: float = 20.0):
        if not cases:
            raise CVBMInputError("no images to sample from")
        self.cases = cases
        self.dim = dim
        self.size = tuple(slice_size or patch_size)
        self.resize = slice_size is not None
        self.augment = augment
        self.rot_flip_probability = rot_flip_probability
        self.rotate_degrees = rotate_degrees
        self.rng = rng or np.random.default_rng()
        self.labeled = cases[0].label is not None
        self._slices = [annotated_slices(c) for c in cases] if dim == 2 else None

    def sample(self, batch: int):
        """(images (B,1,*P) float, labels (B,*P) long or None, annotated (B,*P) float or None)."""
        items = [self._draw() for _ in range(batch)]
        images = torch.from_numpy(np.stack([i[0] for i in items])[:, None].copy())
        if not self.labeled:
            return images, None, None
        labels = torch.from_numpy(np.stack([i[1] for i in items]).copy())
        annotated = torch.from_numpy(np.stack([i[2] for i in items]).astype(np.float32))
        return images, labels, annotated

    def _draw(self):
        index = int(self.rng.integers(len(self.cases)))
        case = self.cases[index]
        arrays = [case.image]
        if self.labeled:
            arrays += [case.label, case.annotated if case.annotated is not None
                       else np.ones(case.image.shape, dtype=bool)]
        if self.dim == 2:
            if case.image.ndim == 3:
                z = int(self.rng.choice(self._slices[index]))
                arrays = [a[z] for a in arrays]
            if self.resize:
                arrays = [_resize(a, self.size, order=1 if i == 0 else 0) for i, a in enumerate(arrays)]
        elif case.image.ndim != 3:
            raise CVBMInputError(f"{case.name}: a 3D model needs 3D volumes, got shape {case.image.shape}")
        if not self.resize:
            arrays = self._crop(arrays)
        if self.augment:
            arrays = self._augment(arrays)
        return arrays

    def _crop(self, arrays):
        pad = [(0, max(0, p - s)) for p, s in zip(self.size, arrays[0].shape)]
        arrays = [np.pad(a, pad) if any(p[1] for p in pad) else a for a in arrays]
        shape = arrays[0].shape
        if self.labeled and not arrays[2].all():
            # centre the crop near a random annotated voxel so the sample carries supervision
            voxels = np.argwhere(arrays[2])
            centre = voxels[int(self.rng.integers(len(voxels)))]
            starts = [int(np.clip(c - p // 2 + self.rng.integers(-p // 4, p // 4 + 1), 0, s - p))
                      for c, p, s in zip(centre, self.size, shape)]
        else:
            starts = [int(self.rng.integers(0, s - p + 1)) for s, p in zip(shape, self.size)]
        box = tuple(slice(s, s + p) for s, p in zip(starts, self.size))
        return [a[box] for a in arrays]

    def _augment(self, arrays):
        if self.rng.random() < self.rot_flip_probability:
            return self._rot_flip(arrays)
        if self.rotate_degrees > 0 and self.rng.random() < 0.5:
            return self._rotate(arrays)
        return arrays

    def _rot_flip(self, arrays):
        plane = (-2, -1)
        if self.size[-1] == self.size[-2]:
            k = int(self.rng.integers(4))
            arrays = [np.rot90(a, k, axes=plane) for a in arrays]
        axis = int(self.rng.integers(-len(self.size), 0))
        return [np.flip(a, axis) for a in arrays]

    def _rotate(self, arrays):
        """In-plane rotation: linear for the image, nearest-neighbour for labels and mask. The corners
        rotated in from outside the crop are filled from its edge (image, labels) and marked as not
        annotated, so they are never supervised as anything."""
        angle = float(self.rng.uniform(-self.rotate_degrees, self.rotate_degrees))
        plane = (arrays[0].ndim - 2, arrays[0].ndim - 1)
        return [ndimage.rotate(a, angle, axes=plane, reshape=False, order=1 if i == 0 else 0,
                               mode="constant" if i == 2 else "nearest", cval=0)
                for i, a in enumerate(arrays)]


def load_cases(images, labels_dir=None, num_classes=None, annotated_dir=None, channel=None,
               names=None) -> List[Case]:
    """Cases from a folder (or single file) of images, with labels matched by case name when
    ``labels_dir`` is given, and optional annotated-voxel masks (non-zero = annotated) from
    ``annotated_dir`` for partly labeled volumes; cases without a mask there are fully annotated.
    ``channel`` picks one volume of 4D (multi-channel or multi-frame) images; ``names`` keeps only
    those cases, in that order. Any unreadable or inconsistent file raises CVBMInputError."""
    from .io import (
        IMAGE_EXTENSIONS,
        check_aligned,
        list_images,
        pair_images_labels,
        read_image,
        read_labels,
        strip_extension,
    )

    images = Path(images)
    if labels_dir is None:
        files = [images] if images.is_file() else list_images(images)
        if not files:
            raise CVBMInputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {images}")
        pairs = [(f, None) for f in files]
    else:
        pairs = pair_images_labels(images, labels_dir)
    if names is not None:
        by_name = {strip_extension(image): (image, label) for image, label in pairs}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise CVBMInputError(f"{len(missing)} case(s) not found in {images}: {', '.join(missing[:5])}")
        pairs = [by_name[n] for n in names]
    masks = {strip_extension(p): p for p in list_images(annotated_dir)} if annotated_dir else {}
    labels = {path: read_labels(path) for _, path in pairs if path is not None}
    for path, array in interpret_labels({p: data.array for p, data in labels.items()}, num_classes).items():
        labels[path].array = array  # decided for the whole set: 0/255 masks are one class
    cases = []
    for image_path, label_path in pairs:
        name = strip_extension(image_path)
        image = read_image(image_path, channel=channel)
        label = None
        if label_path is not None:
            check_aligned(image, labels[label_path], image_path, label_path)
            label = labels[label_path].array
        annotated = read_labels(masks[name]).array > 0 if name in masks else None
        cases.append(make_case(name, image.array, label, annotated=annotated,
                               spacing=image.spacing, num_classes=num_classes))
    return cases
