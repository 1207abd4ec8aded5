"""The headless main job on the bundled sample data: train the teacher, then the student, compare.

Prints Dice of supervised-only vs CVBM (fg / mix / avg outputs, and the bg view alone) on the
held-out sample volumes, writes predictions and a PNG of image, fg and bg confidence side by side.
"""

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from . import synthetic
from .console import train_with_progress
from .core.classes import infer_num_classes
from .core.config import preset
from .core.data import load_cases
from .core.errors import CVBMInputError
from .core.io import write_image
from .core.metrics import dice_score
from .core.predictor import Predictor
from .core.training import TrainingRun
from .core.views import SCORED_VIEWS, view_probabilities


def sample_data_dir(path=None) -> Path:
    """The sample data folder (``labeled/``, ``unlabeled/``, ``test/``): ``path``, else the bundled one."""
    folder = Path(path) if path else synthetic.SAMPLE_DATA
    if not (folder / "labeled" / "images").is_dir():
        raise CVBMInputError(f"no sample data in {folder}: expected labeled/, unlabeled/ and test/ folders "
                             f"(run `python sample_data/generate.py` or pass --data)")
    return folder


def load_sample_cases(folder: Path) -> tuple[list, list, list]:
    """(labeled, unlabeled, test) cases of a sample data folder."""
    labeled = load_cases(folder / "labeled" / "images", folder / "labeled" / "labels")
    unlabeled = load_cases(folder / "unlabeled" / "images")
    test = load_cases(folder / "test" / "images", folder / "test" / "labels")
    return labeled, unlabeled, test


def evaluate_outputs(model, cases, config, views=SCORED_VIEWS) -> Dict[str, dict]:
    """Per-view Dice (mean over cases) and the predictions, one full forward per case."""
    scores = {v: [] for v in views}
    predictions, predictor = {}, Predictor(model, config)
    for case in cases:
        pred = predictor(case.image, spacing=case.spacing, heads="fg" if views == ("fg",) else "all")
        predictions[case.name] = pred
        for view in views:
            probs = view_probabilities(view, pred.fg, pred.bg, pred.mix)
            scores[view].append(dice_score(probs.argmax(0), case.label, config.num_classes))
    return {"dice": {v: float(np.mean(s)) for v, s in scores.items()}, "predictions": predictions}


def save_confidence_figure(path, case, pred) -> Path:
    """PNG: middle slice of image, fg confidence, bg confidence and disagreement, truth outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax((case.label > 0).reshape(case.label.shape[0], -1).sum(1)))
    panels = [("image", case.image[z], "gray", None),
              ("fg confidence (max P_fg)", pred.fg_confidence[z], "magma", (0.5, 1)),
              ("bg confidence (max of 1 - Q_bg)", pred.bg_confidence[z], "magma", (0.5, 1)),
              ("fg/bg disagreement", pred.disagreement[z], "viridis", (0, 1))]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for ax, (title, array, cmap, limits) in zip(axes, panels):
        shown = ax.imshow(array, cmap=cmap, clim=limits)
        ax.contour(case.label[z] > 0, levels=[0.5], colors="cyan", linewidths=0.9)
        ax.contour(pred.labels[z] > 0, levels=[0.5], colors="orange", linewidths=0.9, linestyles="--")
        ax.set_title(title)
        ax.axis("off")
        if limits:
            fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.suptitle(f"{case.name}, slice {z}: CVBM student (cyan: ground truth, dashed orange: prediction)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def run_demo(data_dir=None, out_dir="demo_output", preset_name="cpu", overrides=None,
             device: Optional[str] = None, log=print) -> dict:
    """Train on the sample data and report supervised-only vs CVBM; returns the Dice table."""

    labeled, unlabeled, test = load_sample_cases(sample_data_dir(data_dir))
    out = Path(out_dir)
    num_classes = infer_num_classes(c.label for c in labeled)
    config = preset(preset_name, 3, **{"num_classes": num_classes, **(overrides or {})})
    log(f"CVBM demo: {len(labeled)} labeled, {len(unlabeled)} unlabeled, {len(test)} held-out volumes; "
        f"preset {preset_name!r}: width {config.width}, patch {config.patch_size}, "
        f"{config.pretrain_iterations} + {config.selftrain_iterations} iterations")
    run = TrainingRun(config, labeled, unlabeled, out_dir=out / "model", device=device)
    train_with_progress(run)
    log(f"training took {run.elapsed:.0f} s on {run.device} ({run.precision}); checkpoints in {out / 'model'}")

    supervised = evaluate_outputs(run.pretrained_model(), test, run.config, views=("fg",))
    cvbm = evaluate_outputs(run.final_model(), test, run.config)
    table = {"supervised-only (teacher), fg": supervised["dice"]["fg"]}
    table.update({f"CVBM, {view}": dice for view, dice in cvbm["dice"].items()})
    log(f"\nDice on the held-out sample volumes ({', '.join(c.name for c in test)}):")
    for name, dice in table.items():
        log(f"  {name:<34} {100 * dice:6.2f}")

    for case in test:
        pred = cvbm["predictions"][case.name]
        geometry = dict(spacing=case.spacing)
        write_image(out / "predictions" / f"{case.name}_cvbm.nii.gz", pred.labels, **geometry)
        write_image(out / "predictions" / f"{case.name}_supervised.nii.gz",
                    supervised["predictions"][case.name].labels, **geometry)
        write_image(out / "predictions" / f"{case.name}_fg_confidence.nii.gz", pred.fg_confidence, **geometry)
        write_image(out / "predictions" / f"{case.name}_bg_confidence.nii.gz", pred.bg_confidence, **geometry)
    figure = save_confidence_figure(out / "confidence.png", test[0], cvbm["predictions"][test[0].name])
    log(f"\npredictions: {out / 'predictions'}\nfigure: {figure}")
    return table
