"""Which slices to correct next: the slices where a prediction is most likely wrong (spec 7).

A voxel's label is the fg view's argmax l with confidence ``P_fg[l]``, so ``1 - P_fg[l]`` is the
fg view's probability that the label is wrong. The bg view may disagree: its probability that l
is wrong is ``1 - Q[l] <= (1 - P_fg[l]) + |P_fg - Q|`` (the total-variation disagreement bounds
``|P_fg[l] - Q[l]|``). So ``min(1, (1 - fg confidence) + disagreement)`` is the probability that
the label is wrong taken pessimistically over the two views: voxels where both views are unsure
and voxels where each view is sure but they conflict (the cross-view signal). Without a bg view
it is ``1 - fg confidence`` alone.

A slice's score is the sum over its voxels: the expected number of wrongly labelled voxels, which
is what correcting the slice fixes. A sum favours a slice with much uncertain structure over one
with a single noisy voxel, which a maximum would not. Neighbouring slices of a 3D image score
alike and teach the model nearly the same, so the ranking first spreads its suggestions
(:func:`slices_apart`), then lists the rest.

Slices run along axis 0 (as in :mod:`.annotation`). A 2D image (a photograph) is ranked by square
:class:`Region` s instead, scored the same way; :func:`suggestions` picks slices or regions for any
image. Pure numpy.
"""

import csv
import io
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .annotation import edited_slices
from .outputs import atomic_write

RANKING_COLUMNS = ("case", "slice", "rows", "columns", "score", "rank")
APART_WORKING_SLICES = 2  # first suggestions of a 3D model: at least this many working slices apart
REGION_SIDE = 256  # pixels: a 2D image is ranked by square regions of this side (the last ones smaller)


@dataclass(frozen=True)
class Region:
    """Rows ``y0:y1`` and columns ``x0:x1`` of a 2D image: a part to correct."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def index(self) -> Tuple[slice, slice]:
        return np.s_[self.y0:self.y1, self.x0:self.x1]

    def __str__(self) -> str:
        return f"rows {self.y0}-{self.y1}, columns {self.x0}-{self.x1}"


Place = Union[int, Region]  # a slice (axis 0) of a 3D image, or a region of a 2D one


def voxel_uncertainty(prediction) -> np.ndarray:
    """Per-voxel probability (pessimistic over the fg and bg views) that the label is wrong, in [0, 1]."""
    wrong = np.float32(1.0) - np.asarray(prediction.fg_confidence, dtype=np.float32)
    if prediction.disagreement is not None:
        wrong += prediction.disagreement
        np.minimum(wrong, np.float32(1.0), out=wrong)
    return wrong


def slice_uncertainty(prediction) -> np.ndarray:
    """One score per slice (axis 0; one for a 2D image): the sum of :func:`voxel_uncertainty`,
    float64, the expected number of wrongly labelled voxels of the slice."""
    wrong = voxel_uncertainty(prediction)
    slices = 1 if wrong.ndim < 3 else wrong.shape[0]
    return wrong.reshape(slices, -1).sum(axis=1, dtype=np.float64)


def slices_apart(config, spacing=None) -> int:
    """How many of the image's slices apart the first suggestions stay (:func:`rank_slices`): for a
    3D model, ``APART_WORKING_SLICES`` of its working slices (its ``spacing`` along axis 0 against the
    image's, ``spacing``), since nearer slices teach it nearly the same; 1 for a 2D model, whose
    slices are trained one by one."""
    if config.dim != 3:
        return 1
    own = spacing[0] if spacing is not None else None
    working = config.spacing[0] if config.spacing is not None else own
    ratio = working / own if own and working else 1.0
    return max(1, int(round(APART_WORKING_SLICES * ratio)))


def rank_slices(prediction, exclude: Iterable[int] = (), limit: Optional[int] = None,
                apart: int = 1) -> List[Tuple[int, float]]:
    """(slice, score) pairs, most uncertain first (ties: lower slice first), without the slices in
    ``exclude`` (those already corrected); at most ``limit`` pairs.

    With ``apart`` > 1 the list first spreads out: a slice nearer than ``apart`` to an excluded one
    or to a better-ranked listed one waits until after all the others, in score order."""
    scores = slice_uncertainty(prediction)
    order = [int(s) for s in np.argsort(-scores, kind="stable")]
    skip = {int(s) for s in exclude}
    taken, spread, later = sorted(skip), [], []
    for s in (s for s in order if s not in skip):
        near = apart > 1 and any(abs(s - t) < apart for t in taken)
        (later if near else spread).append(s)
        if not near:
            taken.append(s)
    ranked = [(s, float(scores[s])) for s in spread + later]
    return ranked if limit is None else ranked[:max(int(limit), 0)]


def regions(shape: Sequence[int], side: int = REGION_SIDE) -> List[Region]:
    """The regions that tile a 2D image of ``shape``, row by row."""
    height, width = shape
    return [Region(y, min(y + side, height), x, min(x + side, width))
            for y in range(0, height, side) for x in range(0, width, side)]


def rank_regions(prediction, exclude: Iterable[Region] = (), limit: Optional[int] = None,
                 side: int = REGION_SIDE) -> List[Tuple[Region, float]]:
    """(region, score) pairs of a 2D prediction, most uncertain first (ties: reading order), without
    the regions in ``exclude``; a region's score is the sum of :func:`voxel_uncertainty` over it."""
    wrong = voxel_uncertainty(prediction)
    skip = set(exclude)
    scored = [(r, float(wrong[r.index].sum(dtype=np.float64))) for r in regions(wrong.shape, side) if r not in skip]
    ranked = sorted(scored, key=lambda pair: -pair[1])
    return ranked if limit is None else ranked[:max(int(limit), 0)]


def edited_regions(current: np.ndarray, original: np.ndarray, side: int = REGION_SIDE) -> List[Region]:
    """The regions of a 2D image where ``current`` differs from ``original``."""
    changed = np.asarray(current) != np.asarray(original)
    return [r for r in regions(changed.shape, side) if changed[r.index].any()]


def suggestions(prediction, config, spacing=None, exclude: Iterable[Place] = (),
                limit: Optional[int] = None) -> List[Tuple[Place, float]]:
    """What to correct next, best first: the slices of a 3D image (:func:`rank_slices`, spread
    :func:`slices_apart` for ``config``'s model), the regions of a 2D one (:func:`rank_regions`)."""
    if np.ndim(prediction.labels) == 2:
        return rank_regions(prediction, exclude, limit)
    return rank_slices(prediction, exclude, limit, apart=slices_apart(config, spacing))


def edited_places(current: np.ndarray, original: np.ndarray) -> List[Place]:
    """The places (as :func:`suggestions` lists them) where ``current`` differs from ``original``."""
    if np.ndim(current) == 2:
        return edited_regions(current, original)
    return edited_slices(current, original).tolist()


def write_ranking(path, rankings) -> None:
    """Write ``{case: suggestions(...)}`` as CSV (columns :data:`RANKING_COLUMNS`: a slice, or a
    region's rows and columns as start-stop; rank 1 = correct first), atomically
    (:func:`.outputs.atomic_write`)."""
    def place(p):
        return ("", f"{p.y0}-{p.y1}", f"{p.x0}-{p.x1}") if isinstance(p, Region) else (p, "", "")

    text = io.StringIO(newline="")
    table = csv.writer(text, lineterminator="\n")
    table.writerow(RANKING_COLUMNS)
    table.writerows((case, *place(p), f"{score:.6g}", rank)
                    for case, ranked in rankings.items() for rank, (p, score) in enumerate(ranked, 1))
    with atomic_write(path) as f:
        f.write(text.getvalue().encode("utf-8"))
