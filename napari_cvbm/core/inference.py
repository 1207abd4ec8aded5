"""Headless CVBM inference: sliding-window / slice-wise prediction with three views (spec 7).

Each window's heads become the fg, bg and mix views of :mod:`.views` (spec 1, 7), which give
the output modes and the confidence maps.

Per-window probabilities (not logits) are blended: MONAI's ``sliding_window_inference`` with a
Gaussian (default) or constant importance map, padding inputs smaller than a window and
cropping back. A 2D model segments a volume slice by slice along axis 0, either with 2D sliding
windows or, with ``slice_size``, by resizing each slice (bilinear, ACDC protocol), predicting it
whole and resizing the probabilities back.

This module imports neither Qt nor napari: it runs headless (CLI, tests, GUI worker threads).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .channels import channels_first, spatial_shape
from .components import largest_component_per_class
from .device import autocast, choose_device
from .errors import CVBMInputError
from .intensity import normalize_channels
from .views import (
    OUTPUT_MODES,
    bg_view,
    combine_views,
    confidence_map,
    disagreement_map,
    fg_view,
    mix_view,
    view_probabilities,
)

__all__ = ["HEADS", "BLEND_MODES", "Prediction", "predict"]

HEADS = ("all", "fg")
BLEND_MODES = ("gaussian", "constant")

#: Stitched outputs larger than this stay on the CPU when computing on a GPU.
_MAX_OUTPUT_BYTES_ON_GPU = 2 * 1024 ** 3


def view_labels(view: str, fg: np.ndarray, bg: Optional[np.ndarray], mix: Optional[np.ndarray],
                largest_component: bool = False) -> np.ndarray:
    """The label map of ``view`` (an output mode, or the bg view alone) of the views' probabilities
    (spec 7), each class reduced to its largest connected component when ``largest_component`` (the
    model's post-processing)."""
    num_classes = fg.shape[0]
    labels = view_probabilities(view, fg, bg, mix).argmax(axis=0).astype(np.uint8 if num_classes <= 256 else np.int32)
    return largest_component_per_class(labels, num_classes) if largest_component else labels


# --------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------
@dataclass
class Prediction:
    """Result of :func:`predict`; all probability arrays are float32 with the class axis first.

    ``labels``: argmax of the chosen mode's probabilities (uint8 up to 256 classes, else int32),
    image shape, optionally cleaned to the largest component per class.
    ``fg``: P_fg, (C, *image shape). ``bg``: normalised bg view (:func:`~.views.bg_view`) or None.
    ``mix``: P_M or None. ``fg_confidence`` / ``bg_confidence``: per-voxel max probability of
    each view (bg None if not computed). ``disagreement``: 0.5 * sum_c |P_fg - bg view|, in [0, 1]
    (= |P_fg[1] - bg[1]| for two classes), None if bg not computed. ``mode``: the output mode.
    """

    labels: np.ndarray
    fg: np.ndarray
    bg: Optional[np.ndarray] = None
    mix: Optional[np.ndarray] = None
    fg_confidence: Optional[np.ndarray] = None
    bg_confidence: Optional[np.ndarray] = None
    disagreement: Optional[np.ndarray] = None
    mode: str = "fg"

    @property
    def probabilities(self) -> np.ndarray:
        """Class probabilities of :attr:`mode` (for avg, computed on access)."""
        return combine_views(self.mode, self.fg, self.bg, self.mix)

    def restrict(self, valid: np.ndarray) -> "Prediction":
        """This prediction with everything outside ``valid`` (a field of view, image shape) set to
        certain background in every view, map and label, in place; returns itself."""
        outside = ~np.asarray(valid, dtype=bool)
        if outside.shape != self.labels.shape:
            raise CVBMInputError(f"the field of view has shape {outside.shape}; the image has {self.labels.shape}")
        self.labels[outside] = 0
        for probabilities in (self.fg, self.bg, self.mix):
            if probabilities is not None:
                probabilities[:, outside] = 0.0
                probabilities[0, outside] = 1.0
        for confidence in (self.fg_confidence, self.bg_confidence):
            if confidence is not None:
                confidence[outside] = 1.0
        if self.disagreement is not None:
            self.disagreement[outside] = 0.0
        return self

    @classmethod
    def from_views(cls, fg: np.ndarray, bg: Optional[np.ndarray], mix: Optional[np.ndarray], mode: str,
                   largest_component: bool = False) -> "Prediction":
        """The labels and maps of the views' probabilities (spec 7)."""
        labels = view_labels(mode, fg, bg, mix, largest_component)
        return cls(labels=labels, fg=fg, bg=bg, mix=mix, fg_confidence=confidence_map(fg),
                   bg_confidence=confidence_map(bg) if bg is not None else None,
                   disagreement=disagreement_map(fg, bg) if bg is not None else None, mode=mode)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _as_size(value, ndim: int, what: str, divisor: int) -> Tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        value = (int(value),) * ndim
    try:
        size = tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise CVBMInputError(f"{what} must be {ndim} integers, got {value!r}") from exc
    if len(size) != ndim:
        raise CVBMInputError(f"{what} must have {ndim} entries for this model, got {size}")
    if any(s <= 0 or s % divisor for s in size):
        raise CVBMInputError(f"{what} {size} must be positive multiples of {divisor} (network size divisor)")
    return size


def _overlap_tuple(overlap, ndim: int) -> Tuple[float, ...]:
    if isinstance(overlap, (int, float, np.floating, np.integer)):
        overlap = (float(overlap),) * ndim
    ov = tuple(float(o) for o in overlap)
    if len(ov) != ndim or any(not (0.0 <= o < 1.0) for o in ov):
        raise CVBMInputError(f"overlap must be in [0, 1) (one value or {ndim}), got {overlap!r}")
    return ov


def windows_per_image(image_size: Sequence[int], roi: Sequence[int], overlap: Sequence[float]) -> int:
    """Number of windows MONAI's sliding_window_inference visits for one image."""
    n = 1
    for s, r, o in zip(image_size, roi, overlap):
        s = max(s, r)
        if s == r:
            continue
        interval = max(int(r * (1 - o)), 1)
        n *= math.ceil((s - r) / interval) + 1
    return n


def _is_oom(exc: BaseException) -> bool:
    oom_cls = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_cls is not None and isinstance(exc, oom_cls):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "seems to be oom" in msg)


class _Progress:
    """Calls ``callback(fraction)`` as units of work are done (never raises into inference)."""

    def __init__(self, callback: Optional[Callable[[float], object]], total: int):
        self.callback, self.total, self.done = callback, max(int(total), 1), 0

    def advance(self, n: int) -> None:
        self.done = min(self.done + int(n), self.total)
        self.report(self.done / self.total)

    def report(self, fraction: float) -> None:
        if self.callback is not None:
            self.callback(float(fraction))


def _make_predictor(model, heads: str, num_views: int, progress: _Progress):
    """Window -> tuple of float32 probability tensors: (P_fg,) or (P_fg, bg view, P_M)."""

    def predictor(x: torch.Tensor):
        if num_views == 1:
            fg = model.forward_fg(x) if heads == "fg" else _first(model(x))
            out = (fg_view(fg),)
        else:
            res = model(x)
            fg, bg, mix = (res.fg, res.bg, res.mix) if hasattr(res, "fg") else tuple(res)
            out = (fg_view(fg), bg_view(bg), mix_view(mix))
        progress.advance(x.shape[0])
        return out

    return predictor


def _first(res):
    return res.fg if hasattr(res, "fg") else res[0]


@dataclass
class _Settings:
    batch_size: int
    patch_size: Optional[Tuple[int, ...]]
    out_device: torch.device


def _shrink(s: _Settings, divisor: int, can_shrink_patch: bool):
    """Next, cheaper settings after an out-of-memory error, with a description; None if none left."""
    if s.out_device.type != "cpu":
        return _Settings(s.batch_size, s.patch_size, torch.device("cpu")), "stitching on the CPU"
    if s.batch_size > 1:
        return _Settings(1, s.patch_size, s.out_device), "batch size 1"
    if can_shrink_patch and s.patch_size is not None:
        # Keep at least 2 x divisor so the bottleneck has more than one voxel (InstanceNorm).
        floor = 2 * divisor
        new = tuple(max(floor, (p // 2) // divisor * divisor) if p > floor else p for p in s.patch_size)
        if new != s.patch_size:
            return _Settings(1, new, s.out_device), f"window {new}"
    return None


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------
def predict(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    mode: str = "fg",
    heads: str = "all",
    patch_size: Union[int, Sequence[int], None] = None,
    overlap: Union[float, Sequence[float]] = 0.5,
    device: Union[str, torch.device, None] = None,
    largest_component: bool = False,
    slice_size: Optional[Sequence[int]] = None,
    batch_size: int = 4,
    progress: Optional[Callable[[float], object]] = None,
    blend: str = "gaussian",
    amp: bool = True,
) -> Prediction:
    """Segment ``image`` with a CVBM ``model`` and return all computed views (spec 7).

    Parameters
    ----------
    model: a CVBMNet-like module with ``dim``, ``num_classes``, ``background_branch``,
        ``size_divisor``, ``forward`` (-> (fg, bg, mix) logits) and ``forward_fg``. It is put in
        eval mode (its previous mode restored afterwards) and moved to ``device`` (left there).
    image: raw (z, y, x) or (y, x) array, with a channel axis first for a model of several input
        channels (core.channels); z-scored here, per channel.
    mode: "fg" (default), "mix" or "avg": which probabilities give ``labels``.
    heads: "all" runs the full model once per window and keeps fg, bg and mix views;
        "fg" runs only ``forward_fg`` (plain-network cost; mode must be "fg").
    patch_size: sliding-window size (model.dim entries or one int), multiples of
        ``model.size_divisor``; required except for a 2D model with ``slice_size``.
    overlap: window overlap fraction in [0, 1), one value or one per axis.
    device: "auto"/None, "cpu", "cuda", "mps" or a torch.device (see :func:`~.device.choose_device`).
    largest_component: keep only the largest connected component of each class in ``labels``
        (3D connectivity for volumes, even when predicted slice by slice).
    slice_size: 2D model only: resize every slice to (h, w) (bilinear), predict it whole and
        resize the probabilities back (ACDC protocol) instead of 2D sliding windows.
    batch_size: windows (or slices) per forward pass.
    progress: optional ``callback(fraction)`` called as windows/slices are done (0..1).
    blend: "gaussian" (default) or "constant" importance weighting of overlapping windows.
    amp: mixed precision where ``device`` has it (:func:`~.device.autocast_dtype`);
        False for float32 throughout.
    """
    if mode not in OUTPUT_MODES:
        raise CVBMInputError(f"unknown output mode {mode!r}; choose one of {', '.join(OUTPUT_MODES)}")
    if heads not in HEADS:
        raise CVBMInputError(f"heads must be 'all' or 'fg', got {heads!r}")
    if blend not in BLEND_MODES:
        raise CVBMInputError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
    if int(batch_size) < 1:
        raise CVBMInputError(f"batch_size must be at least 1, got {batch_size}")
    batch_size = int(batch_size)

    dim = int(model.dim)
    num_classes = int(model.num_classes)
    divisor = int(getattr(model, "size_divisor", 1))
    has_bg = bool(getattr(model, "background_branch", True))
    if mode != "fg":
        if heads == "fg":
            raise CVBMInputError(
                f"output mode {mode!r} needs the background branch; use heads='all' (or mode='fg')")
        if not has_bg:
            raise CVBMInputError(
                f"output mode {mode!r} needs the background branch, which this model does not have; "
                "use mode='fg'")
    num_views = 3 if (heads == "all" and has_bg) else 1

    image = np.asarray(image)
    in_channels = int(getattr(model, "in_channels", 1))
    spatial = spatial_shape(image, in_channels)
    if in_channels > 1 and (image.ndim not in (3, 4) or image.shape[0] != in_channels):
        raise CVBMInputError(f"this model takes {in_channels} channels first, (C, y, x) or (C, z, y, x); "
                             f"got shape {image.shape}")
    if len(spatial) not in (2, 3):
        raise CVBMInputError(f"image must be 2D (y, x) or 3D (z, y, x), got shape {image.shape}")
    if image.size == 0:
        raise CVBMInputError(f"image is empty (shape {image.shape})")
    if dim == 3 and len(spatial) == 2:
        raise CVBMInputError(
            f"this is a 3D model but the image is 2D {image.shape}; "
            "use a 3D volume (z, y, x) or a 2D model")
    if dim not in (2, 3):
        raise CVBMInputError(f"model.dim must be 2 or 3, got {dim}")

    if slice_size is not None:
        if dim != 2:
            raise CVBMInputError("slice_size is for 2D models only (a 3D model uses patch_size windows)")
        slice_size = _as_size(slice_size, 2, "slice_size", divisor)
        patch = None
    else:
        if patch_size is None:
            raise CVBMInputError("patch_size is required (the sliding-window size the model was trained with)")
        patch = _as_size(patch_size, dim, "patch_size", divisor)
    ov = _overlap_tuple(overlap, dim)

    norm = normalize_channels(channels_first(image, in_channels))  # (C, *spatial)
    dev = choose_device(device)
    n_vox = int(np.prod(spatial))

    # Stitch on the compute device unless the outputs would be large (then on the CPU).
    out_bytes = 4 * n_vox * (num_classes * num_views + 1)
    out_device = dev if (dev.type == "cpu" or out_bytes <= _MAX_OUTPUT_BYTES_ON_GPU) else torch.device("cpu")
    settings = _Settings(batch_size, patch, out_device)

    was_training = model.training
    model.eval()
    model.to(dev)
    try:
        while True:
            try:
                with torch.inference_mode(), autocast(dev, amp):
                    if dim == 3:
                        views = _predict_volume(model, norm, heads, num_views, settings, ov, dev, blend, progress)
                    else:
                        views = _predict_slices(model, norm, heads, num_views, settings, ov, dev, blend,
                                                slice_size, progress)
                break
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
                if not _is_oom(exc):
                    raise
                nxt = _shrink(settings, divisor, can_shrink_patch=patch is not None)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                if nxt is None:
                    raise CVBMInputError(
                        f"out of memory on {dev} even with batch size 1 and window {settings.patch_size}; "
                        "use device='cpu' or a smaller patch/slice size") from exc
                settings, what = nxt
                warnings.warn(f"CVBM inference ran out of memory on {dev}; retrying with {what}",
                              RuntimeWarning, stacklevel=2)
    finally:
        model.train(was_training)

    bg, mix = (views[1], views[2]) if num_views == 3 else (None, None)
    result = Prediction.from_views(views[0], bg, mix, mode, largest_component)
    if progress is not None:
        progress(1.0)
    return result


def _sliding(x, predictor, settings: _Settings, overlap, dev, blend):
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(
        x, roi_size=settings.patch_size, sw_batch_size=settings.batch_size, predictor=predictor,
        overlap=overlap, mode=blend, padding_mode="constant", cval=0.0,
        sw_device=dev, device=settings.out_device,
    )


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _predict_volume(model, norm, heads, num_views, settings, overlap, dev, blend, progress_cb):
    """3D model: sliding window over the whole (channels, z, y, x) volume -> list of (classes, z, y, x)
    arrays."""
    total = windows_per_image(norm.shape[1:], settings.patch_size, overlap)
    prog = _Progress(progress_cb, total)
    prog.report(0.0)
    x = torch.from_numpy(np.ascontiguousarray(norm))[None].to(dev)
    out = _sliding(x, _make_predictor(model, heads, num_views, prog), settings, overlap, dev, blend)
    if isinstance(out, torch.Tensor):
        out = (out,)
    return [_to_numpy(o[0]) for o in out]


def _predict_slices(model, norm, heads, num_views, settings, overlap, dev, blend, slice_size, progress_cb):
    """2D model: slice by slice along spatial axis 0 (a 2D image is one slice) of a (channels, ...)
    image -> list of (classes, ...) arrays."""
    is_2d_image = norm.ndim == 3
    slices = norm[:, None] if is_2d_image else norm
    _, n, h, w = slices.shape
    num_classes = int(model.num_classes)
    chunk = settings.batch_size
    if slice_size is None:
        total = n * windows_per_image((h, w), settings.patch_size, overlap)
    else:
        total = n
    prog = _Progress(progress_cb, total)
    prog.report(0.0)
    predictor = _make_predictor(model, heads, num_views, prog)
    outs = [np.empty((num_classes, n, h, w), dtype=np.float32) for _ in range(num_views)]
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        x = torch.from_numpy(np.ascontiguousarray(slices[:, start:stop].transpose(1, 0, 2, 3))).to(dev)
        if slice_size is None:
            res = _sliding(x, predictor, settings, overlap, dev, blend)
            if isinstance(res, torch.Tensor):
                res = (res,)
        else:
            xr = x if tuple(x.shape[2:]) == tuple(slice_size) else F.interpolate(
                x, size=tuple(slice_size), mode="bilinear", align_corners=False)
            res = predictor(xr)
            if tuple(slice_size) != (h, w):
                res = tuple(F.interpolate(r, size=(h, w), mode="bilinear", align_corners=False) for r in res)
        for k, r in enumerate(res):
            outs[k][:, start:stop] = _to_numpy(r).transpose(1, 0, 2, 3)
    if is_2d_image:
        outs = [o[:, 0] for o in outs]
    return outs
