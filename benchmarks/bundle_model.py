"""Package the selected model of a ``benchmarks/accuracy.py`` run as a bundled model (``core.bundled``).

    python benchmarks/bundle_model.py runs/acdc_all --name acdc-cardiac \\
        --title "Heart structures in cardiac cine MRI" \\
        --classes "background,right ventricle,myocardium,left ventricle" \\
        --data-terms "ACDC (Bernard et al. 2018), ..." --intended-use "..." \\
        --command "python benchmarks/accuracy.py ../shared/data/acdc --labeled all --eval-split test ..."

Reads RUN_DIR/model/best.pt (the run's selected model) and RUN_DIR/summary.json (its plan, config,
training time and the results of each view on the evaluation split, plus the per-case CSV of the fg
view for the hold-out's case names), and writes napari_cvbm/models/NAME.pt (float16 weights, the
config naming its classes) and NAME.json (the model card: every figure from summary.json, none typed
by hand). An existing bundled model is replaced only with --overwrite. Prints the size of the .pt.
"""

import argparse
import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from napari_cvbm.core import bundled
from napari_cvbm.core.checkpoint import load_model, save_model
from napari_cvbm.core.config import TrainConfig
from napari_cvbm.core.errors import CVBMInputError
from napari_cvbm.core.outputs import refuse_existing


def _case_names(run_dir: Path, summary: dict) -> list:
    """The evaluated cases, from the per-case CSV accuracy.py writes for the trained arm's fg view."""
    table = run_dir / f"{summary['arm']}_{bundled.HEADLINE_VIEW}.csv"
    if not table.is_file():
        return []
    with table.open(newline="") as f:
        return list(dict.fromkeys(row["case"] for row in csv.DictReader(f)))


def bundle(run_dir, name: str, *, title: str, classes, data_terms: str, intended_use: str, modality: str = "",
           limitations: str = "", command: str = "", licence: str = "", overwrite: bool = False, models_dir=None):
    """Write ``name``.pt and ``name``.json into ``models_dir`` (default: the package's models folder);
    returns (pt path, card)."""
    run_dir, folder = Path(run_dir), Path(models_dir) if models_dir is not None else bundled.models_dir()
    if not name or any(c in name for c in "/\\ ") or name.startswith(".") or Path(name).suffix:
        raise CVBMInputError(f"a bundled model's name is a plain word like acdc-cardiac, not {name!r}")
    target, card_path = folder / f"{name}{bundled.SUFFIX}", folder / f"{name}{bundled.CARD_SUFFIX}"
    for existing in (target, card_path):
        refuse_existing(existing, overwrite)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CVBMInputError(f"{run_dir / 'summary.json'} is not a readable accuracy.py summary "
                             f"({type(exc).__name__})") from None
    model, config = load_model(run_dir / "model" / "best.pt")
    if TrainConfig.from_dict(summary["config"]).architecture() != config.architecture():
        raise CVBMInputError(f"{run_dir / 'model' / 'best.pt'} is not the network of {run_dir / 'summary.json'}")
    classes = tuple(classes or bundled.PLANNED.get(name, {}).get("classes", ()))
    config = replace(config, class_names=classes or None)  # checked: one name per class
    card = bundled.make_card(name, config, summary, title=title, data_terms=data_terms, intended_use=intended_use,
                             modality=modality, limitations=limitations, command=command, licence=licence,
                             case_names=_case_names(run_dir, summary))  # refused before anything is written
    save_model(target, model, config, dtype=torch.float16, phase="bundled", bundled_name=name)
    card["file"].update(bytes=target.stat().st_size, sha256=bundled.sha256(target),
                        parameters=sum(p.numel() for p in model.parameters()))
    bundled.write_card(card_path, card)
    return target, card


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the --out folder of a benchmarks/accuracy.py run")
    parser.add_argument("--name", required=True, help=f"the bundled model's name, e.g. {', '.join(bundled.PLANNED)}")
    parser.add_argument("--title", default="", help="one line for the card (default: the planned model's)")
    parser.add_argument("--classes", default="",
                        help="comma-separated class names, background first (default: the planned model's)")
    parser.add_argument("--modality", default="", help="e.g. 'cardiac cine MRI' (default: the planned model's)")
    parser.add_argument("--data-terms", required=True, help="the training data, its source and licence terms")
    parser.add_argument("--intended-use", required=True)
    parser.add_argument("--licence", default="",
                        help="the weights' licence: an SPDX id (e.g. CC-BY-4.0) or text (default: the data terms)")
    parser.add_argument("--limitations", default="", help="default: research use only, the hold-out named only")
    parser.add_argument("--command", default="", help="the command that trained the run")
    parser.add_argument("--models-dir", type=Path, help="default: napari_cvbm/models/ of this checkout")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundled model of this name")
    args = parser.parse_args(argv)
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    try:
        target, card = bundle(args.run_dir, args.name, title=args.title, classes=classes, data_terms=args.data_terms,
                              intended_use=args.intended_use, modality=args.modality, limitations=args.limitations,
                              command=args.command, licence=args.licence, overwrite=args.overwrite,
                              models_dir=args.models_dir)
    except CVBMInputError as exc:
        print(f"bundle_model: error: {exc}", file=sys.stderr)
        return 2
    what, dice = bundled.holdout_dice(card)
    print(f"wrote {target} ({target.stat().st_size / 1e6:.2f} MB, float16) and its card "
          f"{target.with_suffix(bundled.CARD_SUFFIX).name}: {card['holdout']['declaration']}; "
          f"{what} {dice:.3f} ({card['holdout']['view']} view)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
