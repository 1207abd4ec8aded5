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
  whole slices (spec 6, ACDC protocol): 128 on a CPU, 256 on a GPU.
* **batch and width**: the ``cpu`` preset's on a CPU, the ``paper`` preset's (spec 6) on a GPU.
* **step counts** for a time budget: pre-training and self-training in the preset's 1:2 ratio,
  from the measured time of a training step of the planned network on the device (a self-training
  step costs ``SELFTRAIN_COST`` pre-training steps). Without a budget on a GPU, the paper's counts.

Settings the user gives (``overrides``) always win; step counts are planned only when not given, the
patch for the spacing given.
Fine-tuning a model keeps what :func:`fine_tune_overrides` says of it.
"""

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .acceleration import training_step_seconds, use_channels_last
from .checkpoint import build_model
from .config import TrainConfig, preset
from .data import Case
from .networks import CVBMNet

CONTEXT = 0.8  # a patch sees at least this share of the structure's extent along each axis
COARSENING = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
PATCH_VOXELS = {"cpu": 32 * 64 * 64, "gpu": 80 * 112 * 112}  # 3D patch budget per device kind
SLICE_SIDE = {"cpu": 128, "gpu": 256}
MIN_SIDE = 32
SELFTRAIN_COST = 1.8  # a self-training step in pre-training steps (measured on LA patches, 2 cores: 1.6-1.8)
VALIDATIONS = 8  # validation (model selection) runs per phase
DEFAULT_BUDGET_S = 10 * 60.0  # a CPU run without a budget: about ten minutes


@dataclass(frozen=True)
class Fingerprint:
    """What the planner knows of the data (sizes in array order; mm)."""

    dim: int
    spacing: Tuple[float, ...]  # median over all images
    shape: Tuple[int, ...]  # median, in voxels of each image's own spacing
    structure_mm: Optional[Tuple[float, ...]]  # median extent of the labelled structure, None if unknown
    labeled: int
    unlabeled: int

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


def fingerprint(labeled: Sequence[Case], unlabeled: Sequence[Case] = ()) -> Fingerprint:
    cases = list(labeled) + list(unlabeled)
    dim = cases[0].image.ndim
    extents = [e for e in (_structure_extent(c) for c in labeled if c.label is not None) if e is not None]
    return Fingerprint(
        dim=dim,
        spacing=tuple(float(v) for v in np.median([c.spacing for c in cases], axis=0)),
        shape=tuple(int(v) for v in np.median([c.image.shape for c in cases], axis=0)),
        structure_mm=tuple(float(v) for v in np.median(extents, axis=0)) if extents else None,
        labeled=len(labeled), unlabeled=len(unlabeled))


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
    convolutional; the fine-tuned model's config stores them)."""
    keeps_input = model.spacing is not None or model.slice_size is not None
    return {**model.architecture(), **(model.model_input() if keeps_input else {})}


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

    @property
    def seconds(self) -> Optional[float]:
        """The planned training time (both phases), from the measured step."""
        if self.step_seconds is None:
            return None
        c = self.config
        return self.step_seconds * (c.pretrain_iterations + SELFTRAIN_COST * c.selftrain_iterations)

    def describe(self) -> str:
        """One line for the user, e.g. "1.25 mm voxels (images x0.50), patches 32x48x80, batch 2+2,
        width 8, 300 + 600 steps: about 14 min on cpu"."""
        c, fp = self.config, self.fingerprint
        parts = []
        if c.spacing is not None:
            zoom = min(s / w for s, w in zip(fp.spacing, c.spacing))
            parts.append("×".join(f"{s:g}" for s in c.spacing) + f" mm voxels (images ×{zoom:.2f})")
        size = c.slice_size or c.patch_size
        parts.append(("slices resized to " if c.slice_size else "patches ") + "×".join(map(str, size)))
        parts.append(f"batch {c.batch_labeled}+{c.batch_unlabeled}, width {c.width}")
        text = ", ".join(parts) + f", {c.pretrain_iterations} + {c.selftrain_iterations} steps"
        if self.seconds is not None:
            text += f": about {max(1, round(self.seconds / 60))} min on {self.device}"
        return text


def plan(labeled: Sequence[Case], unlabeled: Sequence[Case] = (), device: Optional[torch.device] = None,
         budget_s: Optional[float] = None, overrides: Optional[Dict] = None) -> Plan:
    """The plan for training on these cases on ``device`` within ``budget_s`` seconds (see the
    module docstring); ``overrides`` are settings the user gave, which win."""
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
        values.update(patch_size=(side, side), slice_size=(side, side))
    base = base_preset(device)
    config = preset(base, dim, **{**values, **overrides})
    counts_given = "pretrain_iterations" in overrides and "selftrain_iterations" in overrides
    if counts_given or (budget_s is None and kind == "gpu"):
        return Plan(config, fp, str(device), None, budget_s)
    seconds = _step_seconds(config, device)
    budget = budget_s if budget_s is not None else DEFAULT_BUDGET_S
    pretrain = max(10, int(budget / (seconds * (1 + 2 * SELFTRAIN_COST))))
    counts = {"pretrain_iterations": pretrain, "selftrain_iterations": 2 * pretrain}
    counts = {k: overrides.get(k, v) for k, v in counts.items()}
    every = max(1, counts["pretrain_iterations"] // VALIDATIONS)
    config = preset(base, dim, **{**values, **counts, "validate_every": every, "checkpoint_every": every,
                                  **overrides})
    return Plan(config, fp, str(device), seconds, budget)


def _step_seconds(config: TrainConfig, device: torch.device) -> float:
    """Seconds of one pre-training step (forward and backward of all heads on a batch) of the
    planned network on ``device``, in the layout and precision training will use."""
    model = build_model(config)
    size = config.slice_size or config.patch_size
    layout = use_channels_last(config.channels_last, config.dim, device, config.amp)
    return training_step_seconds(model, (config.batch_labeled, model.in_channels, *size), device, config.amp,
                                 bool(layout), repeats=2)

