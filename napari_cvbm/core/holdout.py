"""Hold out part of the user's labels to check a fine-tune on them (spec 6: select on a validation
split, never on what is reported as test).

Rules of :func:`split_corrections` (slices run along axis 0; a 2D case is one slice and counts as
a whole case). Volumes that look alike (``core.look_alike``: frames of one scan) count as one image:
they are held out together, or on the same slices, so that no check is made on the twin of an
image trained on.

- 3 or more labeled images: whole images are held out, about one in four (at least one, never
  all), picked by ``seed``.
- Fewer: slices are held out. From each image (3D, its look-alikes' annotated slices pooled) with
  at least 4 annotated slices, about one in four of them, evenly spread (never the first or last
  one); the held-out case is the same volume annotated on those slices only, and the training case
  keeps the rest.
- Too little for either: nothing is held out and ``reason`` says why.

Validation scores a held-out case only on its annotated voxels (``TrainingRun``), so the slices
the user did not correct never count.
"""

from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence

import numpy as np

from .annotation import format_slices
from .data import Case, annotated_slices
from .look_alike import look_alike_groups

MIN_CASES = 3  # from this many labeled cases on, whole cases are held out
MIN_SLICES = 4  # a case gives slices to the held-out set from this many annotated slices on
FRACTION = 0.25  # about one in four
TOO_FEW_SLICES = f"too few corrected slices to hold any out: add corrections in at least {MIN_SLICES} slices"
TOO_FEW_IMAGES = f"too few labeled images to hold one out: label at least {MIN_CASES} images"


@dataclass
class Holdout:
    """The training cases and the held-out ones; unpacks as ``(train, held_out)``."""

    train: List[Case]
    held_out: List[Case]
    reason: str = ""  # why nothing was held out ("" when something was)
    what: List[str] = field(default_factory=list)  # what was held out, one phrase per case

    def __iter__(self):
        return iter((self.train, self.held_out))

    def summary(self) -> str:
        """What was held out, e.g. "slices 10, 30 of 'case_001'" ("" when nothing was)."""
        return "; ".join(self.what)


def _count(n: int) -> int:
    """About one in four of ``n``, at least one."""
    return max(1, int(n * FRACTION + 0.5))


def _mask(case: Case) -> np.ndarray:
    return np.ones(case.shape, bool) if case.annotated is None else np.asarray(case.annotated, bool)


def _spread(slices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """About a quarter of ``slices``, one in the middle half of each equal stretch of them, never the
    first or the last one."""
    n, k = len(slices), _count(len(slices))
    stride = n / k
    offset = rng.uniform(0.25, 0.75)
    positions = np.clip(np.floor((np.arange(k) + offset) * stride).astype(int), 1, n - 2)
    return slices[np.unique(positions)]


def _names(cases: Sequence[Case]) -> str:
    """"'a'" for one case, "'a', 'b' (look alike)" for look-alikes."""
    names = ", ".join(f"'{c.name}'" for c in cases)
    return names if len(cases) == 1 else f"{names} (look alike)"


def _whole_images(groups: List[List[Case]], rng: np.random.Generator) -> Holdout:
    chosen = set(rng.choice(len(groups), size=_count(len(groups)), replace=False).tolist())
    held = [groups[i] for i in sorted(chosen)]
    train = [c for i, group in enumerate(groups) if i not in chosen for c in group]
    return Holdout(train, [c for group in held for c in group],
                   what=[f"image{'s' if len(g) > 1 else ''} {_names(g)}" for g in held])


def _slices(groups: List[List[Case]], rng: np.random.Generator) -> Holdout:
    train, held, what = [], [], []
    for group in groups:
        volumes = [c for c in group if len(c.shape) == 3]
        slices = np.unique(np.concatenate([annotated_slices(c) for c in volumes])) if volumes else np.arange(0)
        if len(slices) < MIN_SLICES:
            train.extend(group)
            continue
        out = _spread(slices, rng)
        chosen = np.zeros(group[0].shape[0], bool)
        chosen[out] = True
        for case in group:
            mask = _mask(case)
            kept, checked = mask & ~chosen[:, None, None], mask & chosen[:, None, None]
            train.extend([replace(case, annotated=kept)] if kept.any() else [])
            held.extend([replace(case, annotated=checked)] if checked.any() else [])
        what.append(f"slice{'s' if len(out) > 1 else ''} {format_slices(out)} of {_names(group)}")
    return Holdout(train, held, what=what)


def split_corrections(cases: Sequence[Case], seed: int = 0) -> Holdout:
    """Split labeled ``cases`` into training and held-out cases by the rules of the module docstring;
    the same ``seed`` gives the same split."""
    cases = list(cases)
    rng = np.random.default_rng(seed)
    groups = [[cases[i] for i in group] for group in look_alike_groups(cases)]
    if len(groups) >= MIN_CASES:
        return _whole_images(groups, rng)
    split = _slices(groups, rng)
    if split.held_out:
        return split
    reason = TOO_FEW_SLICES if any(len(c.shape) == 3 for c in cases) else TOO_FEW_IMAGES
    alike = [_names(g) for g in groups if len(g) > 1]
    return Holdout(cases, [], reason=reason + "".join(f"; {names} count as one image" for names in alike))


def got_worse(before: Optional[float], after: Optional[float]) -> bool:
    """Whether a fine-tune's held-out Dice fell, at the two decimals the user is shown (a run that
    changes it by noise is not worse): then its model is discarded and the previous one kept."""
    return before is not None and after is not None and round(after, 2) < round(before, 2)
