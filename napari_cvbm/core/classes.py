"""What the values of a label set mean and how many classes it holds: the one place every client
(CLI, widget, demo, benchmarks) derives them.

Decisions are made per label SET (a folder, the widget's labels layers), never per file, so that
every file of a set is read the same way.
"""

import warnings
from typing import Dict, Iterable, List, Mapping, Optional

import numpy as np

from .errors import CVBMInputError, CVBMNotice

#: how binary masks from other tools and image editors store the foreground: 8-bit and 16-bit maximum
BINARY_FOREGROUND = (255, 65535)
#: the most classes (background included) inferred from the labels alone; more must be given
MAX_INFERRED_CLASSES = 64


def label_values(label) -> np.ndarray:
    """The sorted distinct values of one label map."""
    label = np.asarray(label)
    if label.dtype.kind in "iu" and label.size and label.min() >= 0 and label.max() < 2**20:
        return np.flatnonzero(np.bincount(label.ravel()))  # much faster than unique on large volumes
    return np.unique(label)


def binary_mask_files(values: Mapping[str, np.ndarray], num_classes: Optional[int] = None,
                      what: str = "label file") -> Dict[str, List[int]]:
    """From each file's distinct ``values``: the files whose 255/65535 are a binary mask's foreground
    (class 1), with those values. They stay classes where ``num_classes`` makes them valid; a set
    mixing them with classes other than 0/1 raises :class:`CVBMInputError`."""
    foreground = [v for v in BINARY_FOREGROUND if num_classes is None or v >= num_classes]
    binary = {name: [f for f in foreground if f in v] for name, v in values.items()}
    binary = {name: stored for name, stored in binary.items() if stored}
    others = {name: v[(v > 1) & ~np.isin(v, foreground)] for name, v in values.items()}
    mixed = [name for name, v in others.items() if v.size]
    if binary and mixed:
        example = next(iter(binary))
        classes = np.unique(np.concatenate([others[name] for name in mixed]))
        shown = ", ".join(str(int(c)) for c in classes[:5])
        raise CVBMInputError(
            f"the {what}s mix binary masks (foreground {'/'.join(map(str, binary[example]))} in {example}) "
            f"with class{'es' if classes.size > 1 else ''} {shown} (e.g. in {mixed[0]}); store every file as "
            f"class indices 0, 1, 2, ...")
    return binary


def _check_label_map(name: str, values: np.ndarray, what: str) -> None:
    """Refuse a file whose values would make more than MAX_INFERRED_CLASSES classes: an image?"""
    classes = values[~np.isin(values, BINARY_FOREGROUND)]
    if classes.size and classes.max() >= MAX_INFERRED_CLASSES:
        raise CVBMInputError(
            f"{what} {name} holds {values.size} distinct values up to {int(classes.max())}; is this an image "
            f"rather than a label map? With more than {MAX_INFERRED_CLASSES} classes give their number "
            f"(cvbm: --num-classes)")


def interpret_labels(labels: Mapping[str, np.ndarray], num_classes: Optional[int] = None,
                     what: str = "label file") -> dict:
    """One label set (name -> label map) as the user meant it.

    Binary masks storing the foreground as 255 (8-bit) or 65535 (16-bit), alone or mixed with 0/1
    masks, read as class 1, with one :class:`CVBMNotice` for the set. Without ``num_classes`` a file
    that would make more than MAX_INFERRED_CLASSES classes raises :class:`CVBMInputError`. Other
    maps are returned as they are (the same arrays)."""
    values = {name: label_values(label) for name, label in labels.items()}
    if num_classes is None:
        for name, v in values.items():
            _check_label_map(name, v, what)
    binary = binary_mask_files(values, num_classes, what)
    if not binary:
        return dict(labels)
    stored = sorted(set().union(*binary.values()))
    warnings.warn(f"foreground stored as {' and '.join(map(str, stored))} (binary masks) in {len(binary)} "
                  f"{what}{'s' if len(binary) > 1 else ''}: read as class 1", CVBMNotice, stacklevel=2)
    return {name: np.where(np.isin(label, binary[name]), 1, label) if name in binary else label
            for name, label in labels.items()}


def infer_num_classes(labels: Iterable[np.ndarray], given: Optional[int] = None) -> int:
    """Classes including background: ``given`` when set, else the largest value of the (interpreted,
    see :func:`interpret_labels`) label maps + 1, at least 2."""
    if given is not None:
        return int(given)
    return max(2, 1 + max((int(np.max(label)) for label in labels), default=0))
