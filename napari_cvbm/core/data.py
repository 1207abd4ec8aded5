"""Training cases and the random patch/slice sampler with rot90/flip/rotation augmentation (spec 6)."""

from dataclasses import dataclass
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

from .channels import channel_count, channels_first, spatial_shape
from .classes import interpret_labels
from .errors import CVBMInputError
from .intensity import normalize_channels, normalize_intensity


@dataclass
class Case:
    """One image (z-scored float32, per channel) with its optional labels and masks.

    ``image`` follows core.channels: (z, y, x) / (y, x) for one channel, channels first for more
    (``channel_names`` then names them). ``annotated`` marks the voxels whose labels count (a partly
    corrected volume); None means every voxel of a labeled case is annotated. ``valid`` is a
    field-of-view mask: voxels outside it are neither supervised, pseudo-labelled nor scored
    (None: all are inside).
    """

    name: str
    image: np.ndarray
    label: Optional[np.ndarray] = None
    annotated: Optional[np.ndarray] = None
    spacing: Tuple[float, ...] = ()
    valid: Optional[np.ndarray] = None
    channel_names: Tuple[str, ...] = ()

    @property
    def channels(self) -> int:
        return channel_count(self.channel_names)

    @property
    def shape(self) -> Tuple[int, ...]:
        """The spatial shape."""
        return spatial_shape(self.image, self.channels)


def _mask(name: str, mask, shape, what: str) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != tuple(shape):
        raise CVBMInputError(f"{name}: {what} shape {mask.shape} does not match image {tuple(shape)}")
    if not mask.any():
        raise CVBMInputError(f"{name}: no voxel is inside the {what}")
    return mask


def make_case(name, image, label=None, annotated=None, spacing=None, num_classes=None,
              channel_names: Sequence[str] = (), valid=None) -> Case:
    """Validate and normalise one case; bad input raises :class:`CVBMInputError`. ``image`` has its
    channels first when ``channel_names`` names more than one (core.channels); ``valid`` is a
    field-of-view mask (non-zero inside), which also bounds ``annotated``."""
    image = np.asarray(image)
    channel_names = tuple(str(n) for n in channel_names)
    channels = channel_count(channel_names)
    if channels > 1 and (image.ndim not in (3, 4) or image.shape[0] != channels):
        raise CVBMInputError(f"{name}: image has shape {image.shape}; expected {channels} channels "
                             f"({', '.join(channel_names)}) first")
    shape = spatial_shape(image, channels)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise CVBMInputError(f"{name}: image has shape {image.shape}; expected a 2D or 3D image")
    normalized = normalize_channels(image, name=name) if channels > 1 else normalize_intensity(image, name=name)
    if valid is not None:
        valid = _mask(name, valid, shape, "field-of-view mask")
        valid = None if valid.all() else valid
    if label is not None:
        label = np.asarray(label)
        if label.shape != shape:
            raise CVBMInputError(f"{name}: label shape {label.shape} does not match image shape {shape}")
        if not np.issubdtype(label.dtype, np.integer):
            if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
                raise CVBMInputError(f"{name}: labels must be integer class indices")
        label = label.astype(np.int64)
        if label.min() < 0 or (num_classes is not None and label.max() >= num_classes):
            raise CVBMInputError(
                f"{name}: label values {int(label.min())}..{int(label.max())} are outside 0..{num_classes - 1}"
                if num_classes else f"{name}: negative label values")
        if annotated is not None:
            annotated = _mask(name, annotated, shape, "annotated mask")
        if valid is not None:
            annotated = valid if annotated is None else annotated & valid
            if not annotated.any():
                raise CVBMInputError(f"{name}: no annotated voxel is inside the field-of-view mask")
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * len(shape)
    return Case(name, normalized, label, annotated, spacing, valid, channel_names if channels > 1 else ())


def annotated_slices(case: Case) -> np.ndarray:
    """Indices along axis 0 holding at least one annotated voxel (all slices if fully annotated)."""
    if case.annotated is None:
        return np.arange(case.shape[0])
    return np.flatnonzero(case.annotated.reshape(case.annotated.shape[0], -1).any(1))


def _resize(array: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``array`` resized onto ``shape`` along its last axes (leading ones, e.g. channels, kept)."""
    lead = array.ndim - len(shape)
    factors = [1.0] * lead + [t / s for t, s in zip(shape, array.shape[lead:])]
    return ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)


class Batch(NamedTuple):
    """Training samples: images (B, C, *P) float; for labeled cases labels (B, *P) long and the
    annotated region (B, *P) float; the field of view (B, *P) float when a case has one."""

    images: torch.Tensor
    labels: Optional[torch.Tensor] = None
    annotated: Optional[torch.Tensor] = None
    valid: Optional[torch.Tensor] = None


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
        self.masked = any(c.valid is not None for c in cases)
        self._slices = [annotated_slices(c) for c in cases] if dim == 2 else None

    def sample(self, batch: int) -> Batch:
        """A :class:`Batch` of ``batch`` augmented samples."""
        items = [self._draw() for _ in range(batch)]

        def stacked(k, dtype=None):
            array = np.stack([i[k] for i in items])
            return torch.from_numpy(array.astype(dtype) if dtype else array.copy())

        images = stacked(0)
        labels, annotated = (stacked(1), stacked(2, np.float32)) if self.labeled else (None, None)
        return Batch(images, labels, annotated, stacked(-1, np.float32) if self.masked else None)

    def _draw(self):
        """[image (C, *P), then label and annotated mask for labeled cases, then the field of view
        when the sampler has one]."""
        index = int(self.rng.integers(len(self.cases)))
        case = self.cases[index]
        whole = np.ones(case.shape, dtype=bool)
        arrays = [channels_first(case.image, case.channels)]
        if self.labeled:
            arrays += [case.label, case.annotated if case.annotated is not None else whole]
        if self.masked:
            arrays.append(case.valid if case.valid is not None else whole)
        if self.dim == 2:
            if len(case.shape) == 3:
                z = int(self.rng.choice(self._slices[index]))
                arrays = [arrays[0][:, z]] + [a[z] for a in arrays[1:]]
            if self.resize:
                arrays = [_resize(a, self.size, order=1 if i == 0 else 0) for i, a in enumerate(arrays)]
        elif len(case.shape) != 3:
            raise CVBMInputError(f"{case.name}: a 3D model needs 3D volumes, got shape {case.shape}")
        if not self.resize:
            arrays = self._crop(arrays)
        if self.augment:
            arrays = self._augment(arrays)
        return arrays

    def _crop(self, arrays):
        spatial = arrays[0].shape[1:]
        pad = [(0, max(0, p - s)) for p, s in zip(self.size, spatial)]
        if any(p[1] for p in pad):
            arrays = [np.pad(a, [(0, 0)] * (a.ndim - len(pad)) + pad) for a in arrays]
        shape = arrays[0].shape[1:]
        if self.labeled and not arrays[2].all():
            # centre the crop near a random annotated voxel so the sample carries supervision
            voxels = np.argwhere(arrays[2])
            centre = voxels[int(self.rng.integers(len(voxels)))]
            starts = [int(np.clip(c - p // 2 + self.rng.integers(-p // 4, p // 4 + 1), 0, s - p))
                      for c, p, s in zip(centre, self.size, shape)]
        else:
            starts = [int(self.rng.integers(0, s - p + 1)) for s, p in zip(shape, self.size)]
        box = tuple(slice(s, s + p) for s, p in zip(starts, self.size))
        return [a[(Ellipsis, *box)] for a in arrays]

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
        """In-plane rotation: linear for the image, nearest-neighbour for labels and masks. The corners
        rotated in from outside the crop are filled from its edge (image, labels) and left out of the
        masks (annotated, field of view), so they are never supervised as anything."""
        angle = float(self.rng.uniform(-self.rotate_degrees, self.rotate_degrees))
        first_mask = 2 if self.labeled else 1  # see _draw
        return [ndimage.rotate(a, angle, axes=(a.ndim - 2, a.ndim - 1), reshape=False, order=1 if i == 0 else 0,
                               mode="constant" if i >= first_mask else "nearest", cval=0)
                for i, a in enumerate(arrays)]


def load_cases(images, labels_dir=None, num_classes=None, annotated_dir=None, channel=None,
               names=None, mask_dir=None) -> List[Case]:
    """Cases from a folder (or single file) of images, with labels matched by case name when
    ``labels_dir`` is given, and optional annotated-voxel masks (non-zero = annotated) from
    ``annotated_dir`` for partly labeled volumes; cases without a mask there are fully annotated.
    ``mask_dir``: field-of-view masks (non-zero = inside; e.g. a fundus photograph's disc) by case
    name; a case without one is inside everywhere. ``channel`` picks one volume of 4D (multi-channel
    or multi-frame) images, ``"all"`` keeps them as channels (colour images always keep theirs);
    ``names`` keeps only those cases, in that order. Any unreadable or inconsistent file raises
    CVBMInputError."""
    from .io import (
        IMAGE_EXTENSIONS,
        check_aligned,
        list_images,
        pair_images_labels,
        read_image,
        read_labels,
        read_mask,
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
    views = {strip_extension(p): p for p in list_images(mask_dir)} if mask_dir else {}
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
        valid = read_mask(views.get(name), image, image_path)
        cases.append(make_case(name, image.array, label, annotated=annotated, spacing=image.spacing,
                               num_classes=num_classes, channel_names=image.channel_names, valid=valid))
    return cases
