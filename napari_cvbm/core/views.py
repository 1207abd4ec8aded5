"""The three views of a CVBM model, the outputs made of them and their confidence (spec 1, 7).

A CVBM model has three heads (spec 1), turned into per-class probabilities here:

* **fg view** ``P_fg = softmax(fg logits)``: the ordinary segmentation (CVBM, default output).
* **bg view**: the bg head predicts ``Q_bg = sigmoid(bg logits)``, per class c the probability
  that the voxel is *not* class c. ``1 - Q_bg`` is therefore a per-class "is class c" score, but
  its channels need not sum to one. We normalise it over the classes,
  ``bg = (1 - Q_bg + eps) / sum_c (1 - Q_bg + eps)``, so that it is a probability distribution
  that can be displayed, averaged with ``P_fg`` and compared to it. (Binary case: when the two
  channels agree, ``1 - Q_bg[1] = Q_bg[0]``, normalisation leaves them unchanged.)
* **mix view** ``P_M = softmax(mix logits)`` (CVBM+).

Output modes (:data:`OUTPUT_MODES`, spec 7, paper Table VIII): ``"fg"`` = P_fg, ``"mix"`` = P_M,
``"avg"`` = (P_fg + bg view) / 2 (CVBM++). Confidence (spec 7): the per-voxel maximum probability
of a view, and the fg/bg disagreement.

Logits -> views work on torch tensors with the class axis 1 (N, C, *S); combinations and maps on
numpy arrays with the class axis 0 (C, *S).
"""

from typing import Optional

import numpy as np
import torch

from .errors import CVBMInputError

OUTPUT_MODES = ("fg", "mix", "avg")

#: What a model is scored on: each output mode, and the bg view alone.
SCORED_VIEWS = OUTPUT_MODES + ("bg",)

#: Added to every channel of ``1 - Q_bg`` before normalising (a voxel that the bg head calls
#: "none of the classes" gets a near-uniform bg view instead of 0/0).
BG_EPS = 1e-6


# --------------------------------------------------------------------------------------------
# heads -> probabilities
# --------------------------------------------------------------------------------------------
def fg_view(fg_logits: torch.Tensor) -> torch.Tensor:
    """P_fg = softmax over the class axis (1) of the fg logits, in float32."""
    return torch.softmax(fg_logits.float(), dim=1)


def bg_view(bg_logits: torch.Tensor, eps: float = BG_EPS) -> torch.Tensor:
    """Bg view from bg logits: ``1 - sigmoid`` normalised over the class axis (1), float32.

    ``sigmoid(bg)[c]`` is the probability that the voxel is NOT class c (complementary labels),
    so ``1 - sigmoid(bg)`` scores "is class c"; dividing by its sum over classes makes it a
    distribution comparable with P_fg.
    """
    # 1 - sigmoid(x) == sigmoid(-x), which is exact in low precision too.
    v = torch.sigmoid(-bg_logits.float()) + eps
    return v / v.sum(dim=1, keepdim=True)


def mix_view(mix_logits: torch.Tensor) -> torch.Tensor:
    """P_M = softmax over the class axis (1) of the mixing-layer logits, in float32."""
    return torch.softmax(mix_logits.float(), dim=1)


# --------------------------------------------------------------------------------------------
# combinations and maps (class axis 0)
# --------------------------------------------------------------------------------------------
def combine_views(mode: str, fg: np.ndarray, bg: Optional[np.ndarray] = None,
                  mix: Optional[np.ndarray] = None) -> np.ndarray:
    """Probabilities of an output ``mode``: fg -> fg, mix -> mix, avg -> (fg + bg) / 2."""
    if mode == "fg":
        return fg
    if mode == "mix":
        if mix is None:
            raise CVBMInputError("output mode 'mix' needs the mix head, which was not computed")
        return mix
    if mode == "avg":
        if bg is None:
            raise CVBMInputError("output mode 'avg' needs the bg head, which was not computed")
        return ((fg + bg) * np.float32(0.5)).astype(np.float32, copy=False)
    raise CVBMInputError(f"unknown output mode {mode!r}; choose one of {', '.join(OUTPUT_MODES)}")


def view_probabilities(view: str, fg: np.ndarray, bg: Optional[np.ndarray] = None,
                       mix: Optional[np.ndarray] = None) -> np.ndarray:
    """Probabilities of one of :data:`SCORED_VIEWS`: the bg view itself, or an output mode's."""
    if view != "bg":
        return combine_views(view, fg, bg, mix)
    if bg is None:
        raise CVBMInputError("the bg view needs the bg head, which was not computed")
    return bg


def confidence_map(probs: np.ndarray) -> np.ndarray:
    """Per-voxel maximum class probability (class axis 0), float32 in [1/C, 1]."""
    return probs.max(axis=0).astype(np.float32, copy=False)


def disagreement_map(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Total-variation distance 0.5 * sum_c |fg - bg| (class axis 0), float32 in [0, 1].

    For two classes it equals ``|fg[1] - bg[1]|``.
    """
    out = np.abs(fg[0] - bg[0])
    for c in range(1, fg.shape[0]):
        out += np.abs(fg[c] - bg[c])
    out *= np.float32(0.5)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
