r"""Where fine-tuning a trained model loses accuracy: its Dice on other patients along the run.

    python benchmarks/finetune_drift.py ../shared/data/acdc --start acdc-cardiac --budget 3 \
        --set ema_decay=1.0 --set pretrain_iterations=1 --set selftrain_iterations=100 --every 20

The annotator of ``benchmarks/annotation_loop.py`` (``--correct-from val``: the first ``--volumes``
"val" cases, ``--slices`` evenly spread slices) corrects slices; the run is planned and held out as
the Fine-tune widget does it (``core.planning.fine_tune_overrides`` of the start model, then
``--set``), but validates every ``--every`` steps on the *other* "val" volumes (whole volumes, fg
head, no post-processing) instead of on the held-out corrections, so the printed trajectory shows
how a fine-tune moves the model away from (or towards) patients it was not corrected on. Prints
one line per setting: the Dice before any step and at each check. Nothing is written.
"""

import argparse
import json
import sys
from pathlib import Path

from napari_cvbm.core.config import parse_setting
from napari_cvbm.core.model_source import open_model
from napari_cvbm.core.training import TrainingRun

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import cases  # noqa: E402
from annotation_loop import Annotator, planned_fine_tune  # noqa: E402


def trajectory(data: Path, start: str, volumes: int, slices: int, budget_s: float, settings: dict,
               every: int) -> list:
    """[(phase, step, Dice on the other "val" volumes)], the first entry the start model's."""
    splits = json.loads((data / "splits.json").read_text())
    names = splits["val"][:volumes]
    model, config = open_model(start)
    others = cases(data, [n for n in splits["val"] if n not in names], num_classes=config.num_classes)
    unlabeled = cases(data, splits["train"], with_labels=False)
    annotator = Annotator("even", cases(data, names, num_classes=config.num_classes))
    annotator.pick(slices, strategy="even")
    given = {"dim": config.dim, "num_classes": config.num_classes, **settings, "validate_every": every}
    split, planned = planned_fine_tune(annotator.labeled(), unlabeled, config, budget_s, "cpu", given)
    print(f"plan: {planned.describe()}", flush=True)
    run = TrainingRun(planned.config, split.train, unlabeled, others, initial_weights=model.state_dict())
    points = []
    for event in run.events():
        if not points:
            points.append(("start", 0, run.initial_dice))
        if event.validation_dice is not None:
            points.append((event.phase, event.iteration, event.validation_dice))
    return points


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a dataset folder with a 'val' split (ACDC)")
    parser.add_argument("--start", default="acdc-cardiac", help="a bundled model's name or a checkpoint")
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--slices", type=int, default=8, help="corrected slices over all volumes")
    parser.add_argument("--budget", type=float, default=3.0, metavar="MINUTES")
    parser.add_argument("--every", type=int, default=20, help="steps between two checks on the other volumes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    settings = dict(parse_setting(s) for s in args.set)
    points = trajectory(args.data, args.start, args.volumes, args.slices, 60 * args.budget, settings, args.every)
    print(" ".join(args.set) or "(the plan as it is)", "|",
          " ".join(f"{'start' if phase == 'start' else phase[:3] + str(step)}:{100 * dice:.2f}"
                   for phase, step, dice in points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
