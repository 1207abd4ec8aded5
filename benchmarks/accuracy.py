"""Accuracy benchmark on a dataset folder in the layout of ../shared/data/{acdc,la,hrf} (spec 8).

    python benchmarks/accuracy.py ../shared/data/acdc --labeled 3 --arm cvbm --scale cpu --eval-split val

Folder layout: images/<case>.<ext>, labels/<case>.<ext> (any format core.io reads: NIfTI, TIFF,
PNG, JPEG images), optionally fov/<case>.<ext> field-of-view masks, and splits.json with "train"
and "labeled_<N>" lists (plus "val" and/or "test" when present). Protocol:
- labeled = splits["labeled_<N>"] (else the first N patients of "labeled_patient_order", else the
  first N "train" cases); unlabeled = every other "train" case; ``--labeled all`` (the bundled
  models): every "train" case outside the hold-out and selection sets, labeled, also serving as
  the unlabeled images of self-training;
- model selection on "val" when the folder has it (ACDC), else on a declared selection set: when
  every case is named <number>_<category> (HRF: 01_dr, 01_g, 01_h...), the last 2 cases of each
  category are the hold-out and the one before them the selection set; otherwise the 4 "train"
  cases before the last 16 (LA), the last 16 being the hold-out. The hold-out ("holdout") is left
  out of training when it is the evaluation split and unlabeled training data otherwise;
- pixels outside a case's field of view are neither trained on nor scored;
- evaluation on --eval-split ("val", "test" or "holdout"), whole images, metrics in voxels.
Arms: "supervised" (pre-trained teacher only), "fg_ssl" (same pipeline without bg decoder, mixing
layer and consistency), "cvbm" (reported for the fg, mix and avg outputs, the bg view alone, and
its own pre-trained teacher). Writes per-case CSV and a JSON summary to --out.

Settings come from the planner (``core/planning.py``), as for a user: on this data and device, the
working spacing, patch and step counts for ``--budget`` minutes (3D volumes are resampled for
training and predictions resampled back inside the predictor, so metrics are always in original
voxels); ``--scale paper`` gives the paper's settings (spec 6) as they are. ``--set`` wins over both.
"""

import argparse
import json
import re
import sys
import time
from pathlib import Path

from napari_cvbm.console import train_with_progress
from napari_cvbm.core.classes import infer_num_classes
from napari_cvbm.core.config import parse_setting, preset
from napari_cvbm.core.data import load_cases
from napari_cvbm.core.device import choose_device
from napari_cvbm.core.inference import view_labels
from napari_cvbm.core.metrics import evaluate_cases, format_table, summarize, write_csv
from napari_cvbm.core.planning import plan
from napari_cvbm.core.predictor import Predictor
from napari_cvbm.core.training import TrainingRun
from napari_cvbm.core.views import SCORED_VIEWS

HOLDOUT, SELECTION = 16, 4  # cases, from the end of "train"
HOLDOUT_PER_CATEGORY, SELECTION_PER_CATEGORY = 2, 1  # when cases are named <number>_<category>
CATEGORY = re.compile(r"\d+_([A-Za-z]+)")


def labeled_cases(splits: dict, budget) -> list:
    """splits["labeled_<budget>"]; without it, the volumes of the first ``budget`` patients of
    "labeled_patient_order" (ACDC), else the first ``budget`` "train" cases (LA), as the protocol defines them."""
    if f"labeled_{budget}" in splits:
        return splits[f"labeled_{budget}"]
    if "labeled_patient_order" in splits:
        patients = tuple(f"{p}_" for p in splits["labeled_patient_order"][:budget])
        return [c for c in splits["train"] if c.startswith(patients)]
    return splits["train"][:budget]


def splits_of(folder: Path, labeled, eval_split: str = "holdout") -> dict:
    """The protocol's sets (module docstring) for ``labeled`` (a budget, or "all")."""
    splits = json.loads((folder / "splits.json").read_text())
    train = splits["train"]
    out = {}
    if "val" in splits:
        out["selection"], pool = splits["val"], list(train)
    else:
        out["holdout"], out["selection"] = held_out(train)
        pool = [c for c in train if c not in out["holdout"] + out["selection"]]
        pool += out["holdout"] if eval_split != "holdout" else []
    out["labeled"] = pool if labeled == "all" else labeled_cases(splits, labeled)
    out["unlabeled"] = [c for c in pool if c not in out["labeled"]]
    for name in ("val", "test"):
        if name in splits:
            out[name] = splits[name]
    return out


def held_out(train: list) -> tuple:
    """(hold-out, selection) of the training list, as the module docstring declares them."""
    categories = [CATEGORY.fullmatch(c) for c in train]
    if not all(categories):
        return train[-HOLDOUT:], train[-HOLDOUT - SELECTION:-HOLDOUT]
    by_category = {}
    for case, match in zip(train, categories):
        by_category.setdefault(match.group(1), []).append(case)
    last = HOLDOUT_PER_CATEGORY + SELECTION_PER_CATEGORY
    return ([c for group in by_category.values() for c in group[-HOLDOUT_PER_CATEGORY:]],
            [c for group in by_category.values() for c in group[-last:-HOLDOUT_PER_CATEGORY]])


def cases(folder: Path, names, with_labels=True, num_classes=None):
    """The named cases, through the project's own reader (labels too when asked; the field of
    view from fov/ when the folder has it)."""
    labels = folder / "labels" if with_labels else None
    fov = folder / "fov" if (folder / "fov").is_dir() else None
    return load_cases(folder / "images", labels, num_classes, names=names, mask_dir=fov)


def evaluate(model, eval_cases, config, views):
    """Per-view metric rows over whole volumes, on each case's own grid."""
    results, predictor = {view: [] for view in views}, Predictor(model, config)
    for case in eval_cases:
        pred = predictor(case.image, spacing=case.spacing, channels=case.channel_names,
                         heads="all" if config.background_branch else "fg", amp=config.amp)
        for view in views:  # with the model's post-processing, as cvbm predict and Segment give them
            labels = view_labels(view, pred.fg, pred.bg, pred.mix, bool(config.largest_component))
            results[view].append((case.name, labels, case.label, None, case.valid))
    return {view: evaluate_cases(rows, config.num_classes) for view, rows in results.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--labeled", type=lambda v: v if v == "all" else int(v), required=True,
                        help="labeled budget: ACDC 3 or 7, LA 4 or 8, HRF 1 or 3; 'all': every training case")
    parser.add_argument("--arm", choices=("supervised", "fg_ssl", "cvbm"), default="cvbm")
    parser.add_argument("--scale", choices=("cpu", "paper"), default="cpu")
    parser.add_argument("--dim", type=int, choices=(2, 3),
                        help="default: 2 for 2D images and when the folder has 'val' (ACDC), else 3")
    parser.add_argument("--eval-split", default="val")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--budget", type=float, default=20.0, metavar="MINUTES",
                        help="training time the plan sizes the step counts for (cpu scale; default 20)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    split = splits_of(args.data, args.labeled, args.eval_split)
    if args.eval_split not in split:
        parser.error(f"{args.data} has no split {args.eval_split!r}; choose from "
                     f"{sorted(set(split) & {'val', 'test', 'holdout'})}")
    labeled = cases(args.data, split["labeled"])
    dim = args.dim or (2 if "val" in split or len(labeled[0].shape) == 2 else 3)
    num_classes = infer_num_classes(c.label for c in labeled)
    overrides = dict(parse_setting(s) for s in args.set)
    if args.arm == "supervised":
        overrides["selftrain_iterations"] = 0
    if args.arm == "fg_ssl":
        overrides["background_branch"] = False
    unlabeled = cases(args.data, split["unlabeled"], with_labels=False) \
        if args.arm != "supervised" and split["unlabeled"] else []
    selection = cases(args.data, split["selection"], num_classes=num_classes)
    eval_cases = cases(args.data, split[args.eval_split], num_classes=num_classes)
    overrides = {"dim": dim, "num_classes": num_classes, **overrides}
    if args.scale == "paper":
        config, described = preset("paper", dim, **overrides), "the paper's settings"
    else:
        planned = plan(labeled, unlabeled, choose_device(args.device), budget_s=60 * args.budget, overrides=overrides,
                       validation=selection)
        config, described = planned.config, planned.describe()
    print(f"{args.data.name}: {len(labeled)} labeled, {len(unlabeled)} unlabeled, {len(selection)} selection, "
          f"{len(eval_cases)} {args.eval_split} volumes; arm {args.arm}, scale {args.scale}; plan: {described}")

    run = TrainingRun(config, labeled, unlabeled, selection, out_dir=args.out / "model", device=args.device)
    start = time.perf_counter()
    train_with_progress(run)
    train_seconds = time.perf_counter() - start
    models = {"cvbm": run.final_model()} if args.arm == "cvbm" else {args.arm: run.final_model()}
    if args.arm == "cvbm":
        models["supervised (its teacher)"] = run.pretrained_model()
    report = {"data": str(args.data), "labeled": args.labeled, "arm": args.arm, "scale": args.scale, "plan": described,
              "eval_split": args.eval_split, "train_seconds": train_seconds, "config": run.config.to_dict(),
              "precision": run.precision, "channels_last": run.channels_last,
              "layout_seconds": run.layout_seconds, "selection_dice": run.best_dice,
              "results": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        views = SCORED_VIEWS if name == "cvbm" else ("fg",)
        for view, rows in evaluate(model, eval_cases, run.config, views).items():
            key = f"{name} {view}"
            summary = summarize(rows)
            report["results"][key] = summary
            write_csv(rows, args.out / f"{key.replace(' ', '_').replace('(', '').replace(')', '')}.csv")
            print(f"\n{key} on {args.eval_split} ({len(eval_cases)} volumes):\n{format_table(summary, 'vox')}")
    (args.out / "summary.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\ntraining {train_seconds / 60:.1f} min; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
