"""Hold out part of the user's labels to check a fine-tune on them (spec 6: select on a validation
split, never on what is reported as test).

Rules of :func:`split_corrections` (slices run along axis 0; a 2D case is one slice and counts as
a whole case):

- 3 or more labeled cases: whole cases are held out, about one in four (at least one, never all),
  picked by ``seed``.
- Fewer: slices are held out. From each 3D case with at least 4 annotated slices, about one in four
  of them, evenly spread over its annotated slices (never the first or last one); the held-out
  case is the same image annotated on those slices only, and the training case keeps the rest.
- Too little for either: nothing is held out and ``reason`` says why.

Validation scores a held-out case only on its annotated voxels (``TrainingRun``), so the slices
the user did not correct never count.
"""

from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence

import numpy as np

from .annotation import format_slices
from .data import Case, annotated_slices

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


def split_corrections(cases: Sequence[Case], seed: int = 0) -> Holdout:
    """Split labeled ``cases`` into training and held-out cases by the rules of the module docstring;
    the same ``seed`` gives the same split."""
    cases = list(cases)
    rng = np.random.default_rng(seed)
    if len(cases) >= MIN_CASES:
        chosen = set(rng.choice(len(cases), size=_count(len(cases)), replace=False).tolist())
        held = [c for i, c in enumerate(cases) if i in chosen]
        return Holdout([c for i, c in enumerate(cases) if i not in chosen], held,
                       what=[f"image '{c.name}'" for c in held])
    train, held, what = [], [], []
    for case in cases:
        slices = annotated_slices(case) if len(case.shape) == 3 else np.arange(0)
        if len(slices) < MIN_SLICES:
            train.append(case)
            continue
        out = _spread(slices, rng)
        chosen = np.zeros(case.shape[0], bool)
        chosen[out] = True
        mask = _mask(case)
        train.append(replace(case, annotated=mask & ~chosen[:, None, None]))
        held.append(replace(case, annotated=mask & chosen[:, None, None]))
        what.append(f"slice{'s' if len(out) > 1 else ''} {format_slices(out)} of '{case.name}'")
    if not held:
        reason = TOO_FEW_SLICES if any(len(c.shape) == 3 for c in cases) else TOO_FEW_IMAGES
        return Holdout(cases, [], reason=reason)
    return Holdout(train, held, what=what)


def got_worse(before: Optional[float], after: Optional[float]) -> bool:
    """Whether a fine-tune's held-out Dice fell, at the two decimals the user is shown (a run that
    changes it by noise is not worse): then its model is discarded and the previous one kept."""
    return before is not None and after is not None and round(after, 2) < round(before, 2)
