"""Does "Slices to correct next" point at the slices a model gets wrong? On labelled volumes the
model has not trained on, rank each volume's slices as the Segment widget does
(``core.guidance.slice_uncertainty``, before the list spreads its first suggestions) and compare
with the truth.

    python benchmarks/guidance_quality.py DATA/acdc --model acdc-cardiac --split val
    python benchmarks/guidance_quality.py DATA/la --model la-atrium --split holdout

Per volume, over its slices: the Spearman correlation of the score with the voxels the model labels
wrongly, and the share of those voxels in the ``--top`` slices the list names first, beside the best
possible ``--top`` slices and any ``--top`` slices (their mean). The same for slice Dice (lowest
first, over the slices where the truth or the model has structure) against the score divided by the
structure the model sees in the slice (an error rate rather than a count). Prints the means over
volumes; one line per volume with ``--verbose``.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from napari_cvbm.core.guidance import slice_uncertainty
from napari_cvbm.core.predictor import Predictor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import cases, splits_of  # noqa: E402


def slice_dice(labels: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """Per slice, the mean Dice over the foreground classes either holds (NaN: neither holds any)."""
    out = np.full(labels.shape[0], np.nan)
    for z in range(labels.shape[0]):
        scores = []
        for c in range(1, num_classes):
            a, b = labels[z] == c, truth[z] == c
            if a.any() or b.any():
                scores.append(2 * (a & b).sum() / (a.sum() + b.sum()))
        if scores:
            out[z] = np.mean(scores)
    return out


def top_share(score: np.ndarray, value: np.ndarray, top: int) -> float:
    """The share of ``value``'s total in the ``top`` slices of highest ``score``."""
    return float(value[np.argsort(-score, kind="stable")[:top]].sum() / max(value.sum(), 1))


def volume_figures(prediction, truth: np.ndarray, num_classes: int, top: int) -> dict:
    score = slice_uncertainty(prediction)
    labels = np.asarray(prediction.labels)
    wrong = (labels != truth).reshape(labels.shape[0], -1).sum(1).astype(float)
    structure = (labels > 0).reshape(labels.shape[0], -1).sum(1)
    dice = slice_dice(labels, truth, num_classes)
    has = ~np.isnan(dice)
    rate = score / (structure + 1.0)
    lowest = np.sort(dice[has])[:top]
    return {
        "rho_wrong": spearmanr(score, wrong)[0],
        "share_listed": top_share(score, wrong, top),
        "share_best": top_share(wrong, wrong, top),
        "share_any": min(top, len(wrong)) / len(wrong),
        "rho_dice_sum": spearmanr(score[has], -dice[has])[0] if has.sum() > 2 else np.nan,
        "rho_dice_rate": spearmanr(rate[has], -dice[has])[0] if has.sum() > 2 else np.nan,
        "dice_listed_sum": float(np.mean(dice[has][np.argsort(-score[has], kind="stable")[:top]])),
        "dice_listed_rate": float(np.mean(dice[has][np.argsort(-rate[has], kind="stable")[:top]])),
        "dice_lowest": float(np.mean(lowest)),
        "dice_all": float(np.mean(dice[has])),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--model", required=True, help="a bundled model's name or a checkpoint")
    parser.add_argument("--split", default="val", help="the split scored: val, test or holdout")
    parser.add_argument("--top", type=int, default=3, help="slices the annotator corrects from the top of the list")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    predictor = Predictor.load(args.model)
    names = splits_of(args.data, 0, args.split)[args.split]
    rows = []
    for case in cases(args.data, names, num_classes=predictor.config.num_classes):
        prediction = predictor(case.image, spacing=case.spacing, heads="all", amp=predictor.config.amp)
        rows.append(volume_figures(prediction, np.asarray(case.label), predictor.config.num_classes, args.top))
        if args.verbose:
            print(case.name, " ".join(f"{k} {v:.2f}" for k, v in rows[-1].items()), flush=True)
    mean = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
    print(f"{args.data.name}, {args.model}, {len(rows)} {args.split} volumes, top {args.top} slices:")
    print(f"  wrongly labelled voxels: Spearman with the score {mean['rho_wrong']:.2f}; share in the listed slices "
          f"{100 * mean['share_listed']:.1f}% (the best {args.top}: {100 * mean['share_best']:.1f}%, "
          f"any {args.top}: {100 * mean['share_any']:.1f}%)")
    print(f"  slice Dice (lowest first): Spearman with the score {mean['rho_dice_sum']:.2f}, with the score per "
          f"structure voxel {mean['rho_dice_rate']:.2f}; mean Dice of the listed slices {mean['dice_listed_sum']:.3f} "
          f"(per structure voxel: {mean['dice_listed_rate']:.3f}; the lowest {args.top}: {mean['dice_lowest']:.3f}; "
          f"all slices: {mean['dice_all']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
