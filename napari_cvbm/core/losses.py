"""CVBM losses (spec 4): region-masked Dice + CE, region-wide loss, bidirectional consistency.

Every loss takes a ``region`` weight map of shape (N, *S) and averages as
``sum(loss * region) / sum(region)``; an empty region contributes zero.
"""

import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .labels import background_labels, one_hot
from .views import fg_view, mix_view

_EPS = 1e-5


def _masked_mean(values: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    return (values * region).sum() / region.sum().clamp_min(_EPS)


def soft_dice_loss(probs: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """1 - mean over channels of 2|P.T| / (|P| + |T|), sums restricted to ``region``.

    ``probs`` and ``target`` are (N, C, *S); channels are averaged.
    """
    weight = region.unsqueeze(1)
    dims = (0,) + tuple(range(2, probs.ndim))
    intersection = (probs * target * weight).sum(dims)
    total = (probs * weight).sum(dims) + (target * weight).sum(dims)
    return 1.0 - ((2.0 * intersection + _EPS) / (total + _EPS)).mean()


def softmax_seg_loss(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """L_seg for the fg and mix heads: (soft Dice + CE) / 2 on softmax, masked by ``region``.

    ``target`` holds class indices (N, *S).
    """
    ce = _masked_mean(F.cross_entropy(logits, target.long(), reduction="none"), region)
    dice = soft_dice_loss(logits.softmax(1), one_hot(target, logits.shape[1]), region)
    return 0.5 * (dice + ce)


def complementary_seg_loss(logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """L_seg for the bg head: per-channel binary (sigmoid) BCE + soft Dice, / 2, masked.

    ``target`` holds class indices (N, *S); the head is trained on the complementary
    labels ``background_labels(target)`` (spec 2), so sigmoid(logits)[c] estimates Q_bg[c].
    The BCE is on Q_bg; the soft Dice measures the overlap of the small side of each binary
    problem, 1 - Q_bg[c] against 1 - Y_bg[c] ("is class c"). A Dice of Q_bg against Y_bg, whose
    channels are almost all ones, stays near 0 even when a small structure is missed entirely.
    """
    bg_target = background_labels(target, logits.shape[1])
    bce = F.binary_cross_entropy_with_logits(logits, bg_target, reduction="none").mean(1)
    dice = soft_dice_loss(torch.sigmoid(-logits), 1.0 - bg_target, region)  # sigmoid(-x) = 1 - sigmoid(x)
    return 0.5 * (_masked_mean(bce, region) + dice)


def region_wide_loss(
    output,
    fg_target: torch.Tensor,
    bg_target: torch.Tensor,
    labeled_region: torch.Tensor,
    unlabeled_region: torch.Tensor,
    alpha: float = 0.5,
    mix_head: bool = False,
) -> Dict[str, torch.Tensor]:
    """L_rw = L_fg^l + L_bg^l + alpha (L_fg^u + L_bg^u) for one mixed input (spec 4).

    ``fg_target``/``bg_target`` are class maps: ground truth inside ``labeled_region`` and the
    teacher's fg / bg-view pseudo-labels elsewhere. Without a bg head (``output.bg is None``)
    only the fg terms are used. ``mix_head`` adds L_M^l + alpha L_M^u on the fg targets (our
    extension: the paper and the release train the mix head in self-training only through L_bcl).
    Returns the terms and their weighted sum under ``"rw"``.
    """
    terms = {
        "fg_l": softmax_seg_loss(output.fg, fg_target, labeled_region),
        "fg_u": softmax_seg_loss(output.fg, fg_target, unlabeled_region),
    }
    if output.bg is not None:
        terms["bg_l"] = complementary_seg_loss(output.bg, bg_target, labeled_region)
        terms["bg_u"] = complementary_seg_loss(output.bg, bg_target, unlabeled_region)
    if mix_head and output.mix is not None:
        terms["mix_l"] = softmax_seg_loss(output.mix, fg_target, labeled_region)
        terms["mix_u"] = softmax_seg_loss(output.mix, fg_target, unlabeled_region)
    labeled = sum(v for k, v in terms.items() if k.endswith("_l"))
    unlabeled = sum(v for k, v in terms.items() if k.endswith("_u"))
    terms["rw"] = labeled + alpha * unlabeled
    return terms


def bidirectional_consistency(output, region: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """L_bcl = MSE(P_M, P_fg) [direct] + MSE(1 - Q_bg, P_fg) [inverse], on probabilities (spec 4);
    with ``region`` (N, *S), averaged over its voxels only (a field of view)."""
    p_fg = fg_view(output.fg)

    def mse(p: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(p, p_fg) if region is None else _masked_mean(((p - p_fg) ** 2).mean(1), region)

    direct, inverse = mse(mix_view(output.mix)), mse(1.0 - torch.sigmoid(output.bg))
    return {"bcl_direct": direct, "bcl_inverse": inverse, "bcl": direct + inverse}


def consistency_weight_paper(t: int, t_max: int, weight: float = 0.1) -> float:
    """Paper's Gaussian warm-up: lambda(t) = weight * exp(-5 (1 - t/t_max)^2)."""
    x = min(max(t / max(t_max, 1), 0.0), 1.0)
    return weight * math.exp(-5.0 * (1.0 - x) ** 2)


RELEASE_STEP = 150  # iterations between the release's ramp updates (its "epoch")
RELEASE_STEPS_3D = 40  # updates in the release's 3D ramp (6000 iterations), its coarsest


def consistency_weight_release(t: int, weight: float, rampup: int) -> float:
    """Release's step ramp (spec 4): the same Gaussian curve evaluated every 150 iterations, reaching
    ``weight`` after ``rampup`` iterations (6000 in 3D, 30000 in 2D). A shorter ramp (a shorter run,
    ``config.preset``) keeps at least the 3D ramp's 40 steps, so that its curve keeps its shape: with
    150-iteration steps a 140-iteration fine-tune would stay at ``weight * exp(-5)`` throughout."""
    if rampup <= 0:
        return weight
    step = max(1, min(RELEASE_STEP, rampup // RELEASE_STEPS_3D))
    return consistency_weight_paper((t // step) * step, rampup, weight)


def consistency_weight(t: int, t_max: int, schedule: str, weight: float, rampup: Optional[int] = None) -> float:
    """lambda(t) for the configured ``schedule`` ("release" or "paper")."""
    if schedule == "paper":
        return consistency_weight_paper(t, t_max, weight)
    if schedule == "release":
        return consistency_weight_release(t, weight, t_max if rampup is None else rampup)
    raise ValueError(f"unknown consistency schedule {schedule!r}; use 'release' or 'paper'")
