"""Input channels: how a multi-channel image is laid out and the one check of a model against it.

One convention everywhere (``core.io``, :class:`~.data.Case`, :class:`~.predictor.Predictor`): a
single-channel image has no channel axis, (z, y, x) or (y, x); an image of C > 1 channels has them
first, (C, z, y, x) or (C, y, x). Colour photographs are (red, green, blue). A model stores the
count (``in_channels``, spec 1: one for the paper's grey-level benchmarks, three for HRF) and the
names of its channels (``channel_names``) in its config; every image it segments is checked here.
"""

from typing import Optional, Sequence, Tuple

import numpy as np

from .errors import CVBMInputError

RGB = ("red", "green", "blue")


def channel_count(names: Sequence[str]) -> int:
    """Channels of an image whose channels are ``names`` (() for a single-channel image)."""
    return max(1, len(names))


def spatial_shape(image: np.ndarray, channels: int) -> Tuple[int, ...]:
    """The spatial shape of ``image`` of ``channels`` channels (first axis when more than one)."""
    return tuple(np.shape(image)[1:] if channels > 1 else np.shape(image))


def channels_first(image: np.ndarray, channels: int) -> np.ndarray:
    """``image`` with a channel axis first (a view for one channel)."""
    image = np.asarray(image)
    return image if channels > 1 else image[None]


def _named(names: Sequence[str]) -> bool:
    """Whether ``names`` say what the channels are (not only their indices)."""
    return bool(names) and not all(str(n).isdigit() for n in names)


def _shown(names: Sequence[str], count: int) -> str:
    if count == 1:
        return "1 channel"
    return f"{count} channels" + (f" ({', '.join(names)})" if _named(names) else "")


def check_channels(in_channels: int, model_names: Sequence[str], names: Optional[Sequence[str]],
                   what: str = "the image") -> None:
    """Refuse an image whose channels are ``names`` (() for one channel; None: not known, the model's
    layout is assumed) for a model of ``in_channels`` channels named ``model_names``: the count must
    match, and so must the names when both sides name them (not by index alone)."""
    if names is None:
        return
    names = tuple(str(n) for n in names)
    count = channel_count(names)
    if count != in_channels:
        hint = " (pick one of them)" if in_channels == 1 else ""
        raise CVBMInputError(f"the model expects {_shown(model_names, in_channels)}; {what} has "
                             f"{_shown(names, count)}{hint}")
    if _named(model_names) and _named(names) and tuple(model_names) != names:
        raise CVBMInputError(f"the model expects channels ({', '.join(model_names)}) in this order; {what} has "
                             f"({', '.join(names)})")
