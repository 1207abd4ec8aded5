"""Accuracy benchmark on a dataset folder in the layout of ../shared/data/{acdc,la} (spec 8; issue 4).

    python benchmarks/accuracy.py ../shared/data/acdc --labeled 3 --arm cvbm --scale cpu --eval-split val

Folder layout: images/<case>.nii.gz, labels/<case>.nii.gz, splits.json with "train" and
"labeled_<N>" lists (plus "val" and/or "test" when present). Protocol:
- labeled = splits["labeled_<N>"]; unlabeled = every other "train" case;
- model selection on "val" when the folder has it (ACDC), else on a declared selection set, the
  4 "train" cases before the last 16 (LA); the last 16 "train" cases are the hold-out ("holdout");
- evaluation on --eval-split ("val", "test" or "holdout"), whole volumes, metrics in voxels.
Arms: "supervised" (pre-trained teacher only), "fg_ssl" (same pipeline without bg decoder, mixing
layer and consistency), "cvbm" (reported for the fg, mix and avg outputs, the bg view alone, and
its own pre-trained teacher). Writes per-case CSV and a JSON summary to --out.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from napari_cvbm.cli import _parse_setting, train_with_progress
from napari_cvbm.core.config import preset
from napari_cvbm.core.data import load_cases
from napari_cvbm.core.inference import combine_views, predict
from napari_cvbm.core.metrics import evaluate_cases, format_table, summarize, write_csv
from napari_cvbm.core.training import TrainingRun

HOLDOUT, SELECTION = 16, 4


def splits_of(folder: Path, labeled: int) -> dict:
    splits = json.loads((folder / "splits.json").read_text())
    train = splits["train"]
    chosen = splits[f"labeled_{labeled}"]
    out = {"labeled": chosen}
    if "val" in splits:
        out["selection"] = splits["val"]
        out["unlabeled"] = [c for c in train if c not in chosen]
    else:
        out["holdout"] = train[-HOLDOUT:]
        out["selection"] = train[-HOLDOUT - SELECTION:-HOLDOUT]
        out["unlabeled"] = [c for c in train[:-HOLDOUT - SELECTION] if c not in chosen]
    for name in ("val", "test"):
        if name in splits:
            out[name] = splits[name]
    return out


def cases(folder: Path, names, with_labels=True, num_classes=None):
    """The named cases, through the project's own reader (labels too when asked)."""
    labels = folder / "labels" if with_labels else None
    return load_cases(folder / "images", labels, num_classes, names=names)


def evaluate(model, eval_cases, config, views):
    """Per-view metric rows over whole volumes."""
    preds = {c.name: predict(model, c.image, heads="all" if config.background_branch else "fg",
                             patch_size=config.patch_size, slice_size=config.slice_size,
                             overlap=config.inference_overlap) for c in eval_cases}
    results = {}
    for view in views:
        rows = []
        for case in eval_cases:
            pred = preds[case.name]
            probs = pred.bg if view == "bg" else combine_views(view, pred.fg, pred.bg, pred.mix)
            rows.append((case.name, probs.argmax(0), case.label, None))
        results[view] = evaluate_cases(rows, config.num_classes)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--labeled", type=int, required=True, help="labeled budget: ACDC 3 or 7, LA 4 or 8")
    parser.add_argument("--arm", choices=("supervised", "fg_ssl", "cvbm"), default="cvbm")
    parser.add_argument("--scale", choices=("cpu", "paper"), default="cpu")
    parser.add_argument("--dim", type=int, choices=(2, 3), help="default: 2 when the folder has 'val' (ACDC), else 3")
    parser.add_argument("--eval-split", default="val")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    split = splits_of(args.data, args.labeled)
    dim = args.dim or (2 if "val" in split else 3)
    labeled = cases(args.data, split["labeled"])
    num_classes = max(2, max(int(c.label.max()) for c in labeled) + 1)
    overrides = dict(_parse_setting(s) for s in args.set)
    if args.arm == "supervised":
        overrides["selftrain_iterations"] = 0
    if args.arm == "fg_ssl":
        overrides["background_branch"] = False
    config = preset(args.scale, dim, num_classes=num_classes, **overrides)
    unlabeled = [] if args.arm == "supervised" else cases(args.data, split["unlabeled"], with_labels=False)
    selection = cases(args.data, split["selection"], num_classes=num_classes)
    eval_cases = cases(args.data, split[args.eval_split], num_classes=num_classes)
    print(f"{args.data.name}: {len(labeled)} labeled, {len(unlabeled)} unlabeled, {len(selection)} selection, "
          f"{len(eval_cases)} {args.eval_split} volumes; arm {args.arm}, scale {args.scale}: {config}")

    run = TrainingRun(config, labeled, unlabeled, selection, out_dir=args.out / "model", device=args.device)
    start = time.perf_counter()
    train_with_progress(run)
    train_seconds = time.perf_counter() - start
    models = {"cvbm": run.final_model()} if args.arm == "cvbm" else {args.arm: run.final_model()}
    if args.arm == "cvbm":
        models["supervised (its teacher)"] = run.pretrained_model()
    report = {"data": str(args.data), "labeled": args.labeled, "arm": args.arm, "scale": args.scale,
              "eval_split": args.eval_split, "train_seconds": train_seconds, "config": config.to_dict(),
              "selection_dice": run.best_dice, "results": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        views = ("fg", "mix", "avg", "bg") if name == "cvbm" else ("fg",)
        for view, rows in evaluate(model, eval_cases, config, views).items():
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
