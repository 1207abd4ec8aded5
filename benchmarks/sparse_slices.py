"""Training on a few corrected slices, as a user of the widget does: one round of the annotation loop.

    python benchmarks/sparse_slices.py ../shared/data/la --volumes 2 --slices 8 --budget 15 --out runs/la_slices

The first ``--volumes`` "train" cases are "corrected" on ``--slices`` axial slices each, evenly
spread over the slices that hold the structure (ground truth on those slices only); every other
"train" case before the hold-out is unlabeled; the run is planned from the data (``core/planning``)
for ``--budget`` minutes, like ``cvbm train``. Scored on the hold-out the accuracy benchmark declares
(the last 16 "train" cases; whole volumes, each on its own grid). Prints and writes (``--out``) the
plan, the training time and the hold-out Dice of the teacher and of the CVBM student (fg head).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from napari_cvbm.console import train_with_progress
from napari_cvbm.core.config import parse_setting
from napari_cvbm.core.data import Case
from napari_cvbm.core.device import choose_device
from napari_cvbm.core.metrics import dice_score
from napari_cvbm.core.planning import plan
from napari_cvbm.core.predictor import Predictor
from napari_cvbm.core.training import TrainingRun

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import HOLDOUT, SELECTION, cases  # noqa: E402


def structure_range(label: np.ndarray) -> np.ndarray:
    """The slices (axis 0) from the first to the last one that holds the structure."""
    holding = np.flatnonzero((label > 0).reshape(label.shape[0], -1).any(1))
    return np.arange(holding.min(), holding.max() + 1)


def evenly_spread(label: np.ndarray, count: int) -> np.ndarray:
    """``count`` slices (axis 0) evenly spread inside the range that holds the structure."""
    holding = structure_range(label)
    return np.round(np.linspace(holding[0], holding[-1], count + 2)[1:-1]).astype(int)


def corrected(case: Case, slices: np.ndarray) -> Case:
    """``case`` annotated on ``slices`` only."""
    annotated = np.zeros(case.label.shape, bool)
    annotated[slices] = True
    return Case(case.name, case.image, case.label, annotated, case.spacing)


def holdout_dice(model, config, eval_cases) -> float:
    predictor = Predictor(model, config)
    return float(np.mean([dice_score(predictor(c.image, spacing=c.spacing, heads="fg").labels, c.label,
                                     config.num_classes) for c in eval_cases]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--volumes", type=int, default=2)
    parser.add_argument("--slices", type=int, default=8, help="corrected slices per volume")
    parser.add_argument("--budget", type=float, default=15.0, metavar="MINUTES")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    train = json.loads((args.data / "splits.json").read_text())["train"]
    names = train[:args.volumes]
    labeled = [corrected(c, evenly_spread(c.label, args.slices)) for c in cases(args.data, names)]
    unlabeled = cases(args.data, [n for n in train[:-HOLDOUT - SELECTION] if n not in names], with_labels=False)
    planned = plan(labeled, unlabeled, choose_device(args.device), budget_s=60 * args.budget,
                   overrides=dict(parse_setting(s) for s in args.set))
    print(f"{len(labeled)} volumes x {args.slices} corrected slices, {len(unlabeled)} unlabeled; "
          f"plan: {planned.describe()}")
    run = TrainingRun(planned.config, labeled, unlabeled, device=args.device)
    start = time.perf_counter()
    train_with_progress(run)
    minutes = (time.perf_counter() - start) / 60
    eval_cases = cases(args.data, train[-HOLDOUT:])
    report = {"plan": planned.describe(), "train_minutes": minutes, "volumes": names, "slices": args.slices,
              "teacher": holdout_dice(run.pretrained_model(), run.config, eval_cases),
              "student": holdout_dice(run.final_model(), run.config, eval_cases)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    print(f"trained {minutes:.1f} min; hold-out Dice ({len(eval_cases)} volumes): teacher "
          f"{100 * report['teacher']:.2f}, CVBM student {100 * report['student']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
