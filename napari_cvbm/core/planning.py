"""A run's plan from the data at hand, the same for the widget, ``cvbm train`` and the benchmarks.

Like nnU-Net's experiment planning, a :class:`Fingerprint` of the images (spacing, size, the extent
of the labelled structure in the slices that count) and the device decide:

* the **working spacing** (3D): the median spacing, its finer axes coarsened by the smallest step
  (x1, 1.25, 1.5, 2, 2.5, 3, 4) at which a patch of the device's voxel budget sees at least
  ``CONTEXT`` of the structure's extent along every axis (or the whole image along it). Images are
  resampled to it for training and predictions back onto each image's own grid
  (``core.resampling``, ``core.predictor``); the spacing is stored in the checkpoint's config.
* the **patch** (3D; multiples of the network's 16): the budget's voxels shared out in proportion to
  the image, then grown by 16 along the axis that sees the least of the structure. 2D runs resize
  whole slices (spec 6, ACDC protocol): 128 on a CPU, 256 on a GPU; unless the structure would be
  thinner than ``MIN_THICKNESS`` pixels on them (retinal vessels on a fundus photograph): then they
  train on crops of that size at the images' own resolution and predict with sliding windows.
* the **channels** (``in_channels``, ``channel_names``): those of the images, which must all agree.
* **batch and width**: the ``cpu`` preset's on a CPU, the ``paper`` preset's (spec 6) on a GPU.
* **step counts** for a time budget: pre-training and self-training in the preset's 1:2 ratio
  (with a pre-training count given, as when a trained model stays the teacher, the rest goes to
  self-training), from the measured time of a training step of the planned network on the device
  (a self-training step costs ``SELFTRAIN_COST`` pre-training steps), after the time validation takes: ``VALIDATIONS``
  per pre-training (twice as many in self-training), fewer when they would take more than
  ``VALIDATION_SHARE`` of the budget (large photographs). Without a budget on a GPU, the paper's counts.
* the **window overlap** of sliding-window prediction: the preset's, 0.25 (MONAI's default) for 2D
  patches, which slide over whole photographs of millions of pixels.
* **pseudo-label cleaning** (spec 5: each class's largest connected component per training sample):
  on unless, in label samples of the planned size drawn as training draws them, it would remove more
  than ``1 - CLEANING_KEEPS`` of the structure (branching vessels cut into pieces by a crop's edges),
  as it would then erase true structure from every pseudo-label. Measured on 2D samples and on 3D
  volumes labelled on every slice; kept on when no labels tell.

Settings the user gives (``overrides``) always win; step counts are planned only when not given, the
patch for the spacing given.
Fine-tuning a model keeps what :func:`fine_tune_overrides` says of it.
"""

import math
from dataclasses import dataclass, replace
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage

from .acceleration import inference_window_seconds, training_step_seconds, use_channels_last
from .checkpoint import build_model
from .components import largest_component_per_class
from .config import TrainConfig, preset
from .data import Case, PatchSampler, annotated_slices
from .errors import CVBMInputError
from .inference import windows_per_image
from .networks import CVBMNet

CONTEXT = 0.8  # a patch sees at least this share of the structure's extent along each axis
COARSENING = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
PATCH_VOXELS = {"cpu": 32 * 64 * 64, "gpu": 80 * 112 * 112}  # 3D patch budget per device kind
SLICE_SIDE = {"cpu": 128, "gpu": 256}
MIN_SIDE = 32
MIN_THICKNESS = 2.0  # pixels: thinner structures are not resized away (2D)
SELFTRAIN_COST = 1.8  # a self-training step in pre-training steps (measured on LA patches, 2 cores: 1.6-1.8)
VALIDATIONS = 8  # validation (model selection) runs in pre-training; self-training runs twice as many
VALIDATION_SHARE = 0.2  # validation takes at most this share of a budget
EXTRA_VALIDATIONS = 2  # the starting weights, and the post-processing decision at the end
INFERENCE_BATCH = 4  # windows per forward pass in validation (core.inference's default)
PATCH_OVERLAP_2D = 0.25
DEFAULT_BUDGET_S = 10 * 60.0  # a CPU run without a budget: about ten minutes
CLEANING_KEEPS = 0.95  # pseudo-labels are cleaned when that keeps at least this share of the structure
CLEANING_SAMPLES = 64  # label samples the cleaning decision looks at


@dataclass(frozen=True)
class Fingerprint:
    """What the planner knows of the data (sizes in array order; mm)."""

    dim: int
    spacing: Tuple[float, ...]  # median over all images
    shape: Tuple[int, ...]  # median, in voxels of each image's own spacing
    structure_mm: Optional[Tuple[float, ...]]  # median extent of the labelled structure, None if unknown
    labeled: int
    unlabeled: int
    channel_names: Tuple[str, ...] = ()  # () for single-channel images (core.channels)
    thickness: Optional[float] = None  # median in-plane thickness of the structure, pixels (2D plans)

    def image_mm(self) -> Tuple[float, ...]:
        return tuple(n * s for n, s in zip(self.shape, self.spacing))


def _structure_extent(case: Case) -> Optional[np.ndarray]:
    """Extent (mm) of the labels > 0 on the slices that count; along axis 0 of a partly annotated
    volume, the spread of the annotated slices that hold the structure plus their mean gap on each
    side (the structure goes on about that far beyond the outermost ones: slices spread evenly over
    it give its whole extent)."""
    label = case.label if case.annotated is None else np.where(case.annotated, case.label, 0)
    index = np.argwhere(label > 0)
    if not len(index):
        return None
    extent = (index.max(0) - index.min(0) + 1).astype(float)
    if case.annotated is not None and label.ndim == 3:
        slices = np.unique(index[:, 0])
        if len(slices) > 1:
            extent[0] += 2 * (slices[-1] - slices[0]) / (len(slices) - 1)
    return extent * np.asarray(case.spacing, dtype=float)


def _thickness(case: Case) -> Optional[float]:
    """In-plane thickness of the structure (labels > 0 on the annotated slices), in pixels, from its
    mean distance to the outline: exactly the width of a straight stripe, 4/3 the radius of a disc."""
    label = case.label if case.annotated is None else np.where(case.annotated, case.label, 0)
    planes = label.reshape(-1, *label.shape[-2:]) > 0
    planes = planes[planes.reshape(len(planes), -1).any(1)]
    if not len(planes):
        return None
    depth = np.concatenate([ndimage.distance_transform_edt(np.pad(p, 1))[1:-1, 1:-1][p] for p in planes])
    return float(4 * depth.mean() - 2)  # a stripe w pixels wide: distances 1, 2, ..., 2, 1 (mean w/4 + 1/2)


def fingerprint(labeled: Sequence[Case], unlabeled: Sequence[Case] = ()) -> Fingerprint:
    cases = list(labeled) + list(unlabeled)
    names = {c.channel_names for c in cases}
    if len(names) > 1:
        shown = "; ".join(f"{', '.join(n) or 'one channel'}" for n in sorted(names))
        raise CVBMInputError(f"the images do not have the same channels ({shown}); train on images of one kind")
    dim = len(cases[0].shape)
    with_labels = [c for c in labeled if c.label is not None]
    extents = [e for e in (_structure_extent(c) for c in with_labels) if e is not None]
    thickness = [t for t in (_thickness(c) for c in with_labels) if t is not None] if dim == 2 else []
    return Fingerprint(
        dim=dim,
        spacing=tuple(float(v) for v in np.median([c.spacing for c in cases], axis=0)),
        shape=tuple(int(v) for v in np.median([c.shape for c in cases], axis=0)),
        structure_mm=tuple(float(v) for v in np.median(extents, axis=0)) if extents else None,
        labeled=len(labeled), unlabeled=len(unlabeled), channel_names=names.pop(),
        thickness=float(np.median(thickness)) if thickness else None)


def device_kind(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


def base_preset(device: torch.device) -> str:
    """The preset a plan starts from: ``paper`` on a GPU, ``cpu`` otherwise."""
    return "paper" if device_kind(device) == "gpu" else "cpu"


def fine_tune_overrides(model: TrainConfig) -> Dict:
    """The settings a plan for fine-tuning a model of config ``model`` keeps: its network
    (``architecture()``) and, when it was trained at a working spacing (3D) or on resized slices (2D),
    its input (``model_input()``: only the step counts are planned then). A model trained at each
    image's own spacing gets a planned spacing and patch, as a new network does (it is fully
    convolutional; the fine-tuned model's config stores them). Named classes (``meaning()``) are kept too."""
    keeps_input = model.spacing is not None or model.slice_size is not None
    meaning = {k: v for k, v in model.meaning().items() if v is not None}
    return {**model.architecture(), **(model.model_input() if keeps_input else {}), **meaning}


def _round_up(n: float, step: int) -> int:
    return int(math.ceil(n / step) * step)


def fit_patch(image: Sequence[float], wanted: Sequence[float], voxels: int) -> Tuple[int, ...]:
    """The patch (multiples of 16, sides >= 32) within ``voxels`` for an image of ``image`` voxels
    that best sees ``wanted`` voxels of structure along each axis."""
    step = CVBMNet.size_divisor
    cap = [max(MIN_SIDE, _round_up(n, step)) for n in image]  # no side beyond the (padded) image
    scale = (voxels / float(np.prod(image))) ** (1 / len(image))
    patch = [min(c, max(MIN_SIDE, int(n * scale) // step * step)) for n, c in zip(image, cap)]
    while True:  # grow the side that sees the least of the structure
        seen = [p / max(w, 1.0) if p < c else math.inf for p, w, c in zip(patch, wanted, cap)]
        axis = int(np.argmin(seen))
        grown = patch[:axis] + [patch[axis] + step] + patch[axis + 1:]
        if seen[axis] == math.inf or np.prod(grown) > voxels:
            return tuple(patch)
        patch = grown


def working_spacing(fp: Fingerprint, voxels: int,
                    given: Optional[Tuple[float, ...]] = None) -> Tuple[Tuple[float, ...], Tuple[int, ...]]:
    """(spacing, patch) of the first coarsening step at which the patch sees enough of the structure;
    with a ``given`` spacing, that spacing and the patch for it."""
    finest = min(fp.spacing)
    structure = fp.structure_mm or fp.image_mm()
    steps = [given] if given else [tuple(max(s, f * finest) for s in fp.spacing) for f in COARSENING]
    for spacing in steps:
        image = [mm / s for mm, s in zip(fp.image_mm(), spacing)]
        wanted = [CONTEXT * min(st, mm) / s for st, mm, s in zip(structure, fp.image_mm(), spacing)]
        patch = fit_patch(image, wanted, voxels)
        if all(p >= w for p, w in zip(patch, wanted)):
            break
    return spacing, patch


@dataclass(frozen=True)
class Plan:
    """The planned config, the step time it was planned with and the budget."""

    config: TrainConfig
    fingerprint: Fingerprint
    device: str
    step_seconds: Optional[float]  # measured pre-training step; None when the counts were given
    budget_s: Optional[float]
    validation_seconds: float = 0.0  # estimated, one validation
    cleaning_keeps: Optional[float] = None  # share of the structure the pseudo-labels' cleaning keeps

    @property
    def seconds(self) -> Optional[float]:
        """The planned training time (both phases), from the measured step."""
        if self.step_seconds is None:
            return None
        c = self.config
        validations = EXTRA_VALIDATIONS + (c.pretrain_iterations + c.selftrain_iterations) // c.validate_every
        return (self.step_seconds * (c.pretrain_iterations + SELFTRAIN_COST * c.selftrain_iterations)
                + validations * self.validation_seconds)

    def describe(self) -> str:
        """One line for the user, e.g. "1.25 mm voxels (images x0.50), patches 32x48x80, batch 2+2,
        width 8, 300 + 600 steps: about 14 min on cpu"."""
        c, fp = self.config, self.fingerprint
        parts = [f"{c.in_channels} channels ({', '.join(c.channel_names)})"] if c.channel_names else []
        if c.spacing is not None:
            zoom = min(s / w for s, w in zip(fp.spacing, c.spacing))
            parts.append("×".join(f"{s:g}" for s in c.spacing) + f" mm voxels (images ×{zoom:.2f})")
        size = c.slice_size or c.patch_size
        parts.append(("slices resized to " if c.slice_size else "patches ") + "×".join(map(str, size))
                     + (" at the images' resolution" if c.dim == 2 and not c.slice_size else ""))
        parts.append(f"batch {c.batch_labeled}+{c.batch_unlabeled}, width {c.width}")
        if not c.clean_pseudo_labels:
            kept = f" (the largest keeps {self.cleaning_keeps:.0%})" if self.cleaning_keeps is not None else ""
            parts.append(f"pseudo-labels keep every component{kept}")
        text = ", ".join(parts) + f", {c.pretrain_iterations} + {c.selftrain_iterations} steps"
        if c.ema_decay == 1.0:  # a trained model kept as the teacher (core.fine_tuning)
            text += " (the teacher held fixed)"
        if self.seconds is not None:
            text += f": about {max(1, round(self.seconds / 60))} min on {self.device}"
        return text


def plan(labeled: Sequence[Case], unlabeled: Sequence[Case] = (), device: Optional[torch.device] = None,
         budget_s: Optional[float] = None, overrides: Optional[Dict] = None,
         validation: Sequence[Case] = ()) -> Plan:
    """The plan for training on these cases on ``device`` within ``budget_s`` seconds (see the
    module docstring), validating on ``validation``; ``overrides`` are settings the user gave, which win."""
    overrides = dict(overrides or {})
    device = device or torch.device("cpu")
    kind = device_kind(device)
    fp = fingerprint(labeled, unlabeled)
    dim = overrides.get("dim", fp.dim)
    values: Dict = {}
    if dim == 3:
        given = (overrides["spacing"] or fp.spacing) if "spacing" in overrides else None  # None: the images' own
        spacing, patch = working_spacing(fp, PATCH_VOXELS[kind], given)
        values.update(patch_size=patch, spacing=spacing)
    else:
        side = SLICE_SIDE[kind]
        shrink = side / max(fp.shape[-2:])
        thin = fp.thickness is not None and fp.thickness * min(1.0, shrink) < MIN_THICKNESS
        values.update(patch_size=(side, side), slice_size=None if thin else (side, side))
        if thin:
            values.update(inference_overlap=PATCH_OVERLAP_2D)
    if fp.channel_names:
        values.update(in_channels=len(fp.channel_names), channel_names=fp.channel_names)
    base = base_preset(device)
    config = preset(base, dim, **{**values, **overrides})
    keeps = None if "clean_pseudo_labels" in overrides else share_kept_by_cleaning(labeled, config, fp)
    if keeps is not None and keeps < CLEANING_KEEPS:
        values.update(clean_pseudo_labels=False)
        config = replace(config, clean_pseudo_labels=False)
    counts_given = "pretrain_iterations" in overrides and "selftrain_iterations" in overrides
    if counts_given or (budget_s is None and kind == "gpu"):
        return Plan(config, fp, str(device), None, budget_s, cleaning_keeps=keeps)
    seconds = _step_seconds(config, device)
    budget = budget_s if budget_s is not None else DEFAULT_BUDGET_S
    validating = _validation_seconds(config, validation, device, seconds)
    validations = VALIDATIONS
    if validating:  # pre-training validates `validations` times, self-training twice as often
        validations = max(1, min(VALIDATIONS, int(VALIDATION_SHARE * budget / (3 * validating))))
    training = budget - (3 * validations + EXTRA_VALIDATIONS) * validating
    counts = _step_counts(training, seconds, overrides)
    every = max(1, (counts["pretrain_iterations"] + counts["selftrain_iterations"]) // (3 * validations))
    config = preset(base, dim, **{**values, **counts, "validate_every": every, "checkpoint_every": every,
                                  **overrides})
    return Plan(config, fp, str(device), seconds, budget, validating, cleaning_keeps=keeps)


def share_kept_by_cleaning(labeled: Sequence[Case], config: TrainConfig, fp: Fingerprint,
                           samples: int = CLEANING_SAMPLES) -> Optional[float]:
    """Share of the labelled structure that keeping each class's largest component (the pseudo-labels'
    cleaning, spec 5) keeps in ``samples`` label samples drawn as training draws them, unaugmented
    (3D: crops of the patch's extent in mm at the median spacing ``fp.spacing``, from volumes labelled
    on every slice); None when no case can tell."""
    cases = [c for c in labeled if c.label is not None
             and (config.dim == 2 or len(annotated_slices(c)) == c.shape[0])]
    if not cases:
        return None
    size = config.patch_size
    if config.dim == 3 and config.spacing is not None:
        size = tuple(max(1, round(p * w / s)) for p, w, s in zip(size, config.spacing, fp.spacing))
    sampler = PatchSampler(cases, config.dim, size, config.slice_size, augment=False,
                           rng=np.random.default_rng(config.seed))
    batch = sampler.sample(samples)
    labels = (batch.labels * (batch.annotated > 0)).numpy()
    structure = int((labels > 0).sum())
    if not structure:
        return None
    kept = sum(int((largest_component_per_class(s, config.num_classes) > 0).sum()) for s in labels)
    return kept / structure


def _step_counts(training_s: float, step_s: float, overrides: Dict) -> Dict[str, int]:
    """Step counts for ``training_s`` seconds of steps of ``step_s``: the preset's 1:2 ratio, or with a
    given pre-training count (a kept teacher: ``core.fine_tuning``) the rest to self-training."""
    if "pretrain_iterations" in overrides:
        pretrain = overrides["pretrain_iterations"]
        selftrain = max(10, int((training_s - pretrain * step_s) / (step_s * SELFTRAIN_COST)))
    else:
        pretrain = max(10, int(training_s / (step_s * (1 + 2 * SELFTRAIN_COST))))
        selftrain = 2 * pretrain
    return {"pretrain_iterations": pretrain, "selftrain_iterations": overrides.get("selftrain_iterations", selftrain)}


def _validation_seconds(config: TrainConfig, validation: Sequence[Case], device: torch.device,
                        step_seconds: float) -> float:
    """Seconds of one validation: the windows that predicting ``validation`` visits (each slice
    resized to one window, or sliding windows over the image at the working spacing), at the
    measured time of one window's fg-head forward pass on ``device``; never more than training one
    window of the batch costs (``step_seconds`` of a pre-training step: forward and backward of
    every head), which a timing slowed down by other work on the machine could otherwise suggest."""
    if not validation:
        return 0.0
    window = tuple(config.slice_size or config.patch_size)
    windows = 0
    for case in validation:
        if config.slice_size:
            windows += case.shape[0] if len(case.shape) == 3 else 1
            continue
        shape = case.shape if config.dim == 3 else case.shape[-2:]
        if config.spacing is not None:
            shape = [round(n * s / w) for n, s, w in zip(shape, case.spacing, config.spacing)]
        slices = case.shape[0] if config.dim == 2 and len(case.shape) == 3 else 1
        windows += slices * windows_per_image(shape, window, (config.inference_overlap,) * len(window))
    batch = (INFERENCE_BATCH, config.in_channels, *window)
    window_seconds = inference_window_seconds(build_model(config), batch, device, config.amp)
    return float(windows * min(window_seconds, step_seconds / config.batch_labeled))


def _step_seconds(config: TrainConfig, device: torch.device) -> float:
    """Seconds of one pre-training step (forward and backward of all heads on a batch) of the
    planned network on ``device``, in the layout and precision training will use."""
    model = build_model(config)
    size = config.slice_size or config.patch_size
    layout = use_channels_last(config.channels_last, config.dim, device, config.amp)
    return training_step_seconds(model, (config.batch_labeled, model.in_channels, *size), device, config.amp,
                                 bool(layout), repeats=2)

