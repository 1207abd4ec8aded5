r"""Where fine-tuning a trained model loses accuracy: its Dice on other patients along the run.

    python benchmarks/finetune_drift.py ../shared/data/acdc --start acdc-cardiac --budget 3 \
        --set ema_decay=1.0 --set pretrain_iterations=1 --set selftrain_iterations=100 --every 20

The annotator of ``benchmarks/annotation_loop.py`` (``--correct-from val``: the first ``--volumes``
"val" cases, ``--slices`` slices picked by ``--strategy``: evenly spread, or the top of the start
model's "Slices to correct next" list) corrects slices; the run is planned and held out as
the Fine-tune widget does it (``core.fine_tuning``: ``--set``, under what the start model fixes),
but validates every ``--every`` steps on the *other* "val" volumes (whole volumes, fg head, no
post-processing) instead of on the held-out corrections, so the printed trajectory shows
how a fine-tune moves the model away from (or towards) patients it was not corrected on. At each
check it also scores the corrected volumes on the slices the annotator did not correct: what the
fine-tune did for the images the user is working on. Prints one line per setting: both Dice
before any step and at each check. Nothing is written.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from napari_cvbm.core.config import parse_setting
from napari_cvbm.core.metrics import dice_score
from napari_cvbm.core.model_source import open_model
from napari_cvbm.core.predictor import Predictor
from napari_cvbm.core.training import TrainingRun

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import cases  # noqa: E402
from annotation_loop import STRATEGIES, Annotator, planned_fine_tune  # noqa: E402


def uncorrected_dice(model, config, labeled) -> float:
    """Mean fg-head Dice of ``model`` on the voxels of the corrected volumes outside their corrected slices
    (no post-processing, as the checks on the other volumes)."""
    predictor, scores = Predictor(model, config), []
    for case in labeled:
        rest = ~case.annotated
        labels = predictor(case.image, heads="fg", largest_component=False).labels
        scores.append(dice_score(labels[rest], case.label[rest], config.num_classes))
    return float(np.mean(scores))


def trajectory(data: Path, start: str, volumes: int, slices: int, budget_s: float, settings: dict,
               every: int, strategy: str = "even") -> list:
    """[(phase, step, Dice on the other "val" volumes, Dice on the uncorrected slices of the corrected
    ones)], the first entry the start model's."""
    splits = json.loads((data / "splits.json").read_text())
    names = splits["val"][:volumes]
    model, config = open_model(start)
    others = cases(data, [n for n in splits["val"] if n not in names], num_classes=config.num_classes)
    unlabeled = cases(data, splits["train"], with_labels=False)
    annotator = Annotator(strategy, cases(data, names, num_classes=config.num_classes))
    annotator.pick(slices, model, config)
    given = {"dim": config.dim, "num_classes": config.num_classes, **settings, "validate_every": every}
    own = annotator.labeled()  # the corrected volumes: trained on, and scored outside their corrected slices
    split, planned = planned_fine_tune(own, unlabeled, config, budget_s, "cpu", given, trained=True)
    print("corrected:", "; ".join(f"{name} {', '.join(map(str, z))}" for name, z in annotator.corrected.items()))
    print(f"plan: {planned.describe()}\nat each check: Dice on the other patients / on the uncorrected slices "
          f"of the corrected volumes", flush=True)
    run = TrainingRun(planned.config, split.train, unlabeled, others, initial_weights=model.state_dict())
    points = []
    for event in run.events():
        if not points:
            points.append(("start", 0, run.initial_dice, uncorrected_dice(model, config, own)))
        if event.validation_dice is not None:
            points.append((event.phase, event.iteration, event.validation_dice,
                           uncorrected_dice(run.model, run.config, own)))
    return points


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a dataset folder with a 'val' split (ACDC)")
    parser.add_argument("--start", default="acdc-cardiac", help="a bundled model's name or a checkpoint")
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--slices", type=int, default=8, help="corrected slices over all volumes")
    parser.add_argument("--budget", type=float, default=3.0, metavar="MINUTES")
    parser.add_argument("--strategy", choices=STRATEGIES, default="even", help="how the slices are picked")
    parser.add_argument("--every", type=int, default=20, help="steps between two checks on the other volumes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    settings = dict(parse_setting(s) for s in args.set)
    points = trajectory(args.data, args.start, args.volumes, args.slices, 60 * args.budget, settings, args.every,
                        args.strategy)
    print(" ".join(args.set) or "(the plan as it is)", "|",
          " ".join(f"{'start' if phase == 'start' else phase[:3] + str(step)}:{100 * dice:.2f}/{100 * own:.2f}"
                   for phase, step, dice, own in points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
