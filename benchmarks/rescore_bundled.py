"""Score a bundled model again on the hold-out its card names, as it segments, and update its card.

    python benchmarks/rescore_bundled.py la-atrium ../shared/data/la

Loads the bundled model through the checked path (``core.bundled``), predicts every case named in
its card's ``holdout.case_names`` with the model's own post-processing (``core.inference.view_labels``,
as ``cvbm predict`` and Segment apply it) and writes the card's hold-out figures (Dice of each view,
Dice per class of the fg view) from that scoring, the same way ``benchmarks/bundle_model.py``
writes them from a training run. The weights are not touched (the card's size and SHA-256 still
describe them). Prints each view's metrics and writes their per-case CSVs to ``--out``.
"""

import argparse
import sys
from pathlib import Path

from napari_cvbm.core import bundled
from napari_cvbm.core.metrics import format_table, summarize, write_csv
from napari_cvbm.core.views import SCORED_VIEWS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import cases, evaluate  # noqa: E402


def rescore(name: str, data: Path, out: Path) -> dict:
    """The card of bundled model ``name`` with its hold-out figures scored again on ``data``
    (written in place); per-case CSVs go to ``out``."""
    card, (model, config) = bundled.card(name), bundled.load(name)
    arm, names = card["training"]["arm"], card["holdout"]["case_names"]
    eval_cases = cases(data, names, num_classes=config.num_classes)
    views = SCORED_VIEWS if config.background_branch else ("fg",)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for view, rows in evaluate(model, eval_cases, config, views).items():
        write_csv(rows, out / f"{arm}_{view}.csv")
        results[f"{arm} {view}"] = summarize(rows)
        cleaning = "on" if config.largest_component else "off"
        print(f"\n{name} {view} on {len(eval_cases)} cases (largest component {cleaning}):\n"
              f"{format_table(results[f'{arm} {view}'], 'vox')}")
    summary = {"arm": arm, "eval_split": card["holdout"]["split"], "data": str(data), "results": results}
    card["holdout"] = bundled.holdout_from_summary(summary, config.class_names, names)
    bundled.write_card(bundled.models_dir() / f"{name}{bundled.CARD_SUFFIX}", card)
    return card


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help=f"a bundled model: {', '.join(bundled.PLANNED)}")
    parser.add_argument("data", type=Path, help="the dataset folder its card's hold-out cases come from")
    parser.add_argument("--out", type=Path, default=Path("runs/rescore"))
    args = parser.parse_args(argv)
    card = rescore(args.name, args.data, args.out / args.name)
    print(f"\n{args.name}: card updated, fg Dice {100 * card['holdout']['dice']['fg']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
