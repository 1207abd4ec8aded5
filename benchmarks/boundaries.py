"""Where a model's surface distances (95HD, ASD) come from, per case, class and slice position.

    python benchmarks/boundaries.py runs/acdc3_cvbm/model/best.pt ../shared/data/acdc --out runs/acdc3_bd

Segments every case of ``--split`` with the checkpoint (its own predictor settings, fg head or
``--view``) and scores it as ``accuracy.py`` does (voxels, per class), three ways: as predicted,
with each class reduced to its largest 3D connected component (``core.components``, the
``largest_component`` inference setting), and, for analysis only, with the prediction cut to the
slices where the class truly is (an oracle that shows how much of the distance lies on slices
beyond the structure). It also counts the predicted voxels of each class outside its largest
component and on slices beyond the truth's range, and the classes predicted empty (scored with
the image diagonal as 95HD). Prints the summary and the 10 worst (case, class) pairs, and writes
``cases.csv`` and ``summary.json``.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from napari_cvbm.core.components import largest_component_per_class
from napari_cvbm.core.metrics import binary_metrics
from napari_cvbm.core.predictor import Predictor
from napari_cvbm.core.views import view_probabilities

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import cases  # noqa: E402

WAYS = ("raw", "largest", "oracle_slices")


def truth_slices(truth: np.ndarray) -> np.ndarray:
    """Which slices (axis 0) hold the class, as a (slices, 1, 1) mask."""
    return truth.reshape(truth.shape[0], -1).any(1)[:, None, None]


def analyse(name: str, labels: np.ndarray, truth: np.ndarray, num_classes: int) -> list:
    largest = largest_component_per_class(labels, num_classes)
    rows = []
    for c in range(1, num_classes):
        p, t = labels == c, truth == c
        inside = truth_slices(t)
        row = {"case": name, "class": c, "voxels": int(p.sum()), "outside_largest": int((p & (largest != c)).sum()),
               "beyond_truth_slices": int((p & ~inside).sum()), "empty": int(not p.any())}
        for way, mask in (("raw", p), ("largest", largest == c), ("oracle_slices", p & inside)):
            for metric, value in binary_metrics(mask, t).items():
                row[f"{way}_{metric}"] = value
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--split", default="val")
    parser.add_argument("--view", default="fg", choices=("fg", "mix", "avg", "bg"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    predictor = Predictor.load(args.checkpoint)
    config = predictor.config
    names = json.loads((args.data / "splits.json").read_text())[args.split]
    rows = []
    for case in cases(args.data, names, num_classes=config.num_classes):
        pred = predictor(case.image, spacing=case.spacing, heads="fg" if args.view == "fg" else "all",
                         amp=config.amp)
        labels = view_probabilities(args.view, pred.fg, pred.bg, pred.mix).argmax(0)
        rows.extend(analyse(case.name, labels, case.label, config.num_classes))
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "cases.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {way: {m: float(np.mean([r[f"{way}_{m}"] for r in rows])) for m in ("dice", "hd95", "asd")}
               for way in WAYS}
    summary["per_class"] = {c: {way: {m: float(np.mean([r[f"{way}_{m}"] for r in rows if r["class"] == c]))
                                      for m in ("dice", "hd95", "asd")} for way in WAYS}
                            for c in range(1, config.num_classes)}
    voxels = sum(r["voxels"] for r in rows)
    summary["share_outside_largest"] = sum(r["outside_largest"] for r in rows) / max(voxels, 1)
    summary["share_beyond_truth_slices"] = sum(r["beyond_truth_slices"] for r in rows) / max(voxels, 1)
    summary["empty_classes"] = sum(r["empty"] for r in rows)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    for way in WAYS:
        s = summary[way]
        print(f"{way:>14}: DSC {100 * s['dice']:.2f}  95HD {s['hd95']:.2f}  ASD {s['asd']:.2f} (voxels)")
    for c, ways in summary["per_class"].items():
        print(f"  class {c}: " + "; ".join(f"{w} 95HD {v['hd95']:.2f}" for w, v in ways.items()))
    print(f"predicted voxels outside each class's largest component: {100 * summary['share_outside_largest']:.2f}%;"
          f" on slices beyond the truth's: {100 * summary['share_beyond_truth_slices']:.2f}%; "
          f"classes predicted empty: {summary['empty_classes']}")
    print("worst (case, class) by raw 95HD:")
    for r in sorted(rows, key=lambda r: -r["raw_hd95"])[:10]:
        print(f"  {r['case']} class {r['class']}: 95HD {r['raw_hd95']:.1f} -> largest {r['largest_hd95']:.1f}, "
              f"oracle slices {r['oracle_slices_hd95']:.1f}; {r['outside_largest']} voxels outside the largest "
              f"component, {r['beyond_truth_slices']} beyond the truth's slices")
    return 0


if __name__ == "__main__":
    sys.exit(main())
