"""Segmentation metrics as the semi-supervised segmentation tables report them (spec 8).

For every foreground class ``c`` (1..num_classes-1) of one case, the prediction mask
``P = prediction == c`` and the truth mask ``T = truth == c`` give:

* ``dice``    -- Dice similarity coefficient (DSC), ``2|P & T| / (|P| + |T|)``.
* ``jaccard`` -- Jaccard index (IoU), ``|P & T| / |P | T|``.
* ``hd95``    -- 95% Hausdorff distance (95HD): the 95th percentile (numpy's default linear
  interpolation) of the *pooled* surface distances of both directions, prediction surface to
  truth surface and truth surface to prediction surface. This is medpy's
  ``metric.binary.hd95``, which the papers' evaluation scripts call.
* ``asd``     -- average surface distance (ASD): the mean distance from each surface voxel of
  the *prediction* to the nearest surface voxel of the truth. This is medpy's
  ``metric.binary.asd(prediction, truth)``, which is **directed** (not symmetric); it is what the
  CVBM / BCP / SSL4MIS evaluation scripts report as "ASD". (medpy's symmetric variant is
  ``assd``; it is not used here.)

Surfaces follow medpy: the surface of a mask is its voxels that a binary erosion with the
face-connected structuring element (4-neighbourhood in 2D, 6 in 3D) removes; the region
outside the image counts as background, so a mask touching the image edge has a surface
there. Distances are Euclidean between voxel centres, computed with
``scipy.ndimage.distance_transform_edt``.

Units: distances are in voxels when ``spacing`` is ``None`` and in physical units (mm) when
``spacing`` is given, one value per array axis in the array's axis order ((z, y, x) for a volume,
(y, x) for an image), exactly like medpy's ``voxelspacing``.

Empty masks (medpy raises on these; values here are defined so that every case has a number):

* prediction and truth both empty for a class: ``dice = 1``, ``jaccard = 1``, ``hd95 = 0``,
  ``asd = 0`` (a perfect answer).
* exactly one of them empty: ``dice = 0``, ``jaccard = 0``, and ``hd95 = asd =`` the length of
  the image diagonal, ``sqrt(sum((shape[i] * spacing[i]) ** 2))`` (in voxels when no spacing is
  given): a finite worst case, longer than any distance between two voxels of the image.

Why not MONAI: ``monai.metrics.compute_hausdorff_distance(percentile=95)`` takes the *maximum of
the two directed* 95th percentiles instead of the percentile of the pooled distances, and its
``compute_average_surface_distance(symmetric=True)`` is a pooled symmetric mean rather than
medpy's directed ``asd``; both give other numbers than the published tables, so the few lines
below use scipy directly.

Averages (``summarize``): per class, the mean over cases; overall, for each metric, the mean
over cases of the per-case mean over the foreground classes (as the papers report it).
"""

from __future__ import annotations

import csv
import io
import math
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from .errors import CVBMInputError
from .outputs import atomic_write

METRIC_NAMES = ("dice", "jaccard", "hd95", "asd")

_CSV_COLUMNS = ("case", "class") + METRIC_NAMES
_TABLE_HEADERS = {"dice": "Dice(%)", "jaccard": "Jaccard(%)", "hd95": "95HD", "asd": "ASD"}


# ----------------------------------------------------------------------------- checks


def _as_labels(array, what: str) -> np.ndarray:
    """Return ``array`` as an integer numpy array, refusing non-whole values."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise CVBMInputError(f"{what} must hold whole label values, not fractions or NaN")
        return array.astype(np.int64)
    raise CVBMInputError(f"{what} must be an integer label array, got dtype {array.dtype}")


def _check_spacing(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    try:
        values = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing, dtype=float)))
    except (TypeError, ValueError):
        raise CVBMInputError(f"spacing must be numbers, one per axis, got {spacing!r}") from None
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim:
        raise CVBMInputError(
            f"spacing {values} has {len(values)} values but the images have {ndim} axes"
        )
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise CVBMInputError(f"spacing values must be positive numbers, got {values}")
    return values


def _check_labels(labels: np.ndarray, num_classes: int, what: str) -> None:
    outside = np.unique(labels[(labels < 0) | (labels >= num_classes)])
    if outside.size:
        shown = ", ".join(str(v) for v in outside[:10]) + (", ..." if outside.size > 10 else "")
        raise CVBMInputError(
            f"{what} holds label values {shown} outside 0..{num_classes - 1} "
            f"(num_classes = {num_classes})"
        )


# ----------------------------------------------------------------------------- binary metrics


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` removed by one face-connected erosion (outside counts as background)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _crop_to_union(prediction: np.ndarray, truth: np.ndarray):
    """Crop both masks to their joint bounding box plus one background voxel where there is room.

    The margin keeps the erosion (and hence the surfaces) identical to the uncropped one, and
    every nearest surface voxel lies inside the box, so the distances do not change.
    """
    coords = np.nonzero(prediction | truth)
    box = tuple(
        slice(max(int(c.min()) - 1, 0), min(int(c.max()) + 2, n))
        for c, n in zip(coords, prediction.shape)
    )
    return prediction[box], truth[box]


def binary_metrics(prediction, truth, spacing: Sequence[float] | None = None) -> dict[str, float]:
    """Dice, Jaccard, 95HD and ASD of two binary masks of the same shape (see module docstring)."""
    prediction = np.asarray(prediction, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise CVBMInputError(
            f"prediction shape {prediction.shape} differs from truth shape {truth.shape}"
        )
    sampling = _check_spacing(spacing, prediction.ndim)

    n_pred = int(prediction.sum())
    n_truth = int(truth.sum())
    if n_pred == 0 and n_truth == 0:
        return {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0}
    if n_pred == 0 or n_truth == 0:
        diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(prediction.shape, sampling)))
        return {"dice": 0.0, "jaccard": 0.0, "hd95": diagonal, "asd": diagonal}

    overlap = int(np.count_nonzero(prediction & truth))
    dice = 2.0 * overlap / (n_pred + n_truth)
    jaccard = overlap / (n_pred + n_truth - overlap)

    prediction, truth = _crop_to_union(prediction, truth)
    pred_surface = _surface(prediction)
    truth_surface = _surface(truth)
    # distance of every voxel to the nearest surface voxel of the other mask
    to_truth = ndimage.distance_transform_edt(~truth_surface, sampling=sampling)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)[truth_surface]

    hd95 = float(np.percentile(np.concatenate([to_truth, to_pred]), 95))
    asd = float(to_truth.mean())
    return {"dice": dice, "jaccard": jaccard, "hd95": hd95, "asd": asd}


def dice_score(prediction, truth, num_classes: int) -> float:
    """Mean Dice over the foreground classes, without the surface metrics (fast, for validation).

    Empty conventions as above: a class absent from both maps scores 1.
    """
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    scores = []
    for c in range(1, num_classes):
        p, t = prediction == c, truth == c
        total = int(p.sum()) + int(t.sum())
        scores.append(1.0 if total == 0 else 2.0 * int(np.count_nonzero(p & t)) / total)
    return float(np.mean(scores))


# ----------------------------------------------------------------------------- per case


def case_metrics(
    prediction, truth, num_classes: int, spacing: Sequence[float] | None = None, mask=None
) -> dict[int, dict[str, float]]:
    """Metrics of one case: ``{class: {metric: value}}`` for classes 1..num_classes-1.

    ``prediction`` and ``truth`` are 2D or 3D integer label maps of one shape with values in
    0..num_classes-1; ``spacing`` (one value per axis, same axis order) gives distances in mm,
    ``None`` in voxels; ``mask`` (a field of view, non-zero inside): voxels outside are not scored
    (both maps read as background there). Raises ``CVBMInputError`` on mismatched shapes or
    out-of-range labels.
    """
    if int(num_classes) != num_classes or num_classes < 2:
        raise CVBMInputError(f"num_classes must be an integer of at least 2, got {num_classes}")
    num_classes = int(num_classes)
    prediction = _as_labels(prediction, "prediction")
    truth = _as_labels(truth, "truth")
    if prediction.shape != truth.shape:
        raise CVBMInputError(
            f"prediction shape {prediction.shape} differs from truth shape {truth.shape}"
        )
    if prediction.ndim not in (2, 3):
        raise CVBMInputError(
            f"label maps must be 2D or 3D, got {prediction.ndim} axes (shape {prediction.shape})"
        )
    _check_spacing(spacing, prediction.ndim)
    _check_labels(prediction, num_classes, "prediction")
    _check_labels(truth, num_classes, "truth")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != prediction.shape:
            raise CVBMInputError(f"mask shape {mask.shape} differs from the label maps' {prediction.shape}")
        prediction, truth = (np.where(mask > 0, labels, 0) for labels in (prediction, truth))
    return {
        c: binary_metrics(prediction == c, truth == c, spacing) for c in range(1, num_classes)
    }


def evaluate_cases(cases: Iterable[tuple], num_classes: int) -> list[dict]:
    """Metrics of many cases, one row per (case, foreground class).

    ``cases`` yields ``(name, prediction, truth, spacing)`` tuples (``spacing`` may be ``None``),
    or ``(name, prediction, truth, spacing, mask)`` with a field of view (:func:`case_metrics`).
    Rows are dicts with keys ``case, class, dice, jaccard, hd95, asd``. Case names must be unique.
    """
    rows: list[dict] = []
    seen: set[str] = set()
    for name, prediction, truth, spacing, *mask in cases:
        name = str(name)
        if name in seen:
            raise CVBMInputError(f"case name {name!r} appears twice")
        seen.add(name)
        try:
            per_class = case_metrics(prediction, truth, num_classes, spacing, *mask)
        except CVBMInputError as error:
            raise CVBMInputError(f"case {name}: {error}") from None
        for c, values in per_class.items():
            rows.append({"case": name, "class": c, **values})
    return rows


# ----------------------------------------------------------------------------- summaries


def summarize(rows: Iterable[dict]) -> dict:
    """Averages of ``evaluate_cases`` rows.

    Returns ``{"num_cases": n, "classes": {c: {metric: mean over cases}},
    "mean": {metric: mean over cases of the per-case mean over classes}}``.
    """
    rows = list(rows)
    if not rows:
        raise CVBMInputError("no cases to summarise")
    by_class: dict[int, list[dict]] = {}
    by_case: dict[str, list[dict]] = {}
    for row in rows:
        by_class.setdefault(int(row["class"]), []).append(row)
        by_case.setdefault(str(row["case"]), []).append(row)

    def mean(values) -> float:
        return float(np.mean([float(v) for v in values]))

    classes = {
        c: {m: mean(r[m] for r in class_rows) for m in METRIC_NAMES}
        for c, class_rows in sorted(by_class.items())
    }
    case_means = [
        {m: mean(r[m] for r in case_rows) for m in METRIC_NAMES} for case_rows in by_case.values()
    ]
    overall = {m: mean(cm[m] for cm in case_means) for m in METRIC_NAMES}
    return {"num_cases": len(by_case), "classes": classes, "mean": overall}


def write_csv(rows: Iterable[dict], path) -> None:
    """Write ``evaluate_cases`` rows to a CSV file (columns case,class,dice,jaccard,hd95,asd), atomically."""
    with atomic_write(path) as raw:
        handle = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = csv.DictWriter(handle, fieldnames=_CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
        handle.detach()  # flushes; atomic_write syncs and closes the file


def format_table(summary: dict, distance_unit: str = "") -> str:
    """A printable table of a ``summarize`` result: one line per class and the mean.

    Dice and Jaccard are shown in percent, 95HD and ASD in the unit they were computed in
    (voxels, or mm with a spacing); ``distance_unit`` (e.g. ``"mm"``) is added to their headers.
    """
    unit = f" ({distance_unit})" if distance_unit else ""
    headers = ["Class"] + [
        _TABLE_HEADERS[m] + (unit if m in ("hd95", "asd") else "") for m in METRIC_NAMES
    ]

    def cells(label: str, values: dict) -> list[str]:
        out = [label]
        for m in METRIC_NAMES:
            value = values[m] * 100.0 if m in ("dice", "jaccard") else values[m]
            out.append(f"{value:.2f}")
        return out

    lines = [cells(str(c), values) for c, values in summary["classes"].items()]
    lines.append(cells("Mean", summary["mean"]))
    widths = [max(len(row[i]) for row in [headers] + lines) for i in range(len(headers))]

    def render(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first] + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])])

    rule = "-" * len(render(headers))
    text = [f"{summary['num_cases']} case(s)", render(headers), rule]
    text += [render(row) for row in lines[:-1]] + [rule, render(lines[-1])]
    return "\n".join(text)
