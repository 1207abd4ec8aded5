"""The ready-made models shipped in ``napari_cvbm/models/``, by name, each with its model card.

A bundled model is two files: ``<name>.pt``, a model checkpoint of float16 weights (loaded, like
any checkpoint, through ``core.checkpoint.load_model``: weights only, checked keys and shapes,
float32 parameters), and ``<name>.json``, its card (:data:`CARD_FIELDS`): what it segments
(modality, dimension, class names, channels), the input it expects (working spacing, patch or
slice size, the plan), the data it was trained on and its terms, how it was trained (command,
budget, time), the hold-out it was scored on and its Dice per view, intended use and limitations,
and the file's size and checksum. ``benchmarks/bundle_model.py`` writes both from a run of
``benchmarks/accuracy.py``: every figure on a card comes from that run's ``summary.json``.

The starter model (``starter.pt``, trained on the sample data, no card) is not one of them: it
stays the napari widgets' default (``gui.models``). Every decision about names and cards lives
here; the CLI (``cvbm models``) and the widgets only show them.
"""

import hashlib
import json
from difflib import get_close_matches
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .config import TrainConfig
from .errors import CVBMInputError

#: Where the bundled models lie (tests point it elsewhere: every function reads it when called).
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
CARD_VERSION = 1
CARD_FIELDS = ("card_version", "name", "title", "modality", "task", "dim", "classes", "channels", "input",
               "data", "licence", "tags", "training", "holdout", "intended_use", "limitations", "file",
               "napari_cvbm_version")
HEADLINE_VIEW = "fg"  # the Dice a one-line description quotes: the view `cvbm predict` gives by default
SUFFIX = ".pt"
CARD_SUFFIX = ".json"

#: The models planned for the package, with what their card says unless the packaging tool is told otherwise.
PLANNED: Dict[str, dict] = {
    "la-atrium": dict(title="Left atrium in 3D gadolinium-enhanced MRI", modality="left atrium MRI",
                      classes=("background", "left atrium")),
    "acdc-cardiac": dict(title="Heart structures in cardiac cine MRI", modality="cardiac cine MRI",
                         classes=("background", "right ventricle", "myocardium", "left ventricle")),
    "hrf-vessels": dict(title="Retinal vessels in colour fundus photographs", modality="retinal fundus photograph",
                        classes=("background", "vessel")),
}
DEFAULT_LIMITATIONS = (
    "Research use only, not a medical device: never use it for diagnosis or treatment. Scored on the "
    "hold-out named on this card only; images from other scanners, sites, protocols or diseases may be "
    "segmented worse. Check every segmentation, and fine-tune on your own corrected images first.")


def models_dir() -> Path:
    return Path(MODELS_DIR)


def names() -> List[str]:
    """The bundled models present: each ``<name>.pt`` with its card ``<name>.json``, sorted."""
    folder = models_dir()
    if not folder.is_dir():
        return []
    return sorted(p.name[:-len(SUFFIX)] for p in folder.glob(f"*{SUFFIX}")
                  if (folder / f"{p.name[:-len(SUFFIX)]}{CARD_SUFFIX}").is_file())


def is_name(source) -> bool:
    """Whether ``source`` is the name of a bundled model present (not a path)."""
    return isinstance(source, str) and source in names()


def known_names(source: Optional[str] = None) -> str:
    """For messages: the close matches of ``source`` (if any), then every bundled model."""
    present = names()
    close = get_close_matches(str(source), present, 3, 0.5) if source is not None else []
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    listed = ", ".join(present) if present else f"none are installed (in {models_dir()})"
    return f"{hint}bundled models: {listed}"


def _check_name(name) -> str:
    if not is_name(name):
        raise CVBMInputError(f"no bundled model called {str(name)!r}; {known_names(str(name))}")
    return name


def path(name: str) -> Path:
    """The checkpoint of bundled model ``name``; an unknown name raises CVBMInputError with the known ones."""
    return models_dir() / f"{_check_name(name)}{SUFFIX}"


def card(name: str) -> dict:
    """The model card of bundled model ``name`` (a dict of :data:`CARD_FIELDS`)."""
    card_path = models_dir() / f"{_check_name(name)}{CARD_SUFFIX}"
    try:
        values = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CVBMInputError(f"the card of bundled model {name!r} ({card_path}) is unreadable "
                             f"({type(exc).__name__})") from None
    missing = [f for f in CARD_FIELDS if not isinstance(values, dict) or f not in values]
    if missing:
        raise CVBMInputError(f"the card of bundled model {name!r} ({card_path}) lacks {', '.join(missing)}")
    return values


def load(name: str):
    """(model, config) of bundled model ``name``, through the safe loading path, after checking that the
    file is the one its card describes (size and SHA-256)."""
    from .checkpoint import load_model

    checkpoint, facts = path(name), card(name)["file"]
    if checkpoint.stat().st_size != facts.get("bytes") or sha256(checkpoint) != facts.get("sha256"):
        raise CVBMInputError(f"bundled model {name!r}: {checkpoint} is not the file its card describes "
                             f"(changed after packaging?); package it again with benchmarks/bundle_model.py")
    return load_model(checkpoint)


def class_list(class_names: Optional[Sequence[str]], background: bool = False) -> str:
    """"right ventricle / myocardium / left ventricle" (class 0 too with ``background``); "" if not named."""
    if not class_names:
        return ""
    return " / ".join(class_names if background else class_names[1:])


def holdout_dice(values: Mapping) -> Tuple[str, Optional[float]]:
    """(what the figure is, the headline Dice) of a card: "hold-out Dice" when the cases scored were
    neither trained on nor used to select the model, else "validation Dice"; None without a figure."""
    holdout = values.get("holdout") or {}
    what = "hold-out Dice" if holdout.get("independent") else "validation Dice"
    return what, (holdout.get("dice") or {}).get(HEADLINE_VIEW)


def dice_text(values: Mapping) -> str:
    """E.g. "hold-out Dice 0.81 (20 cases)" of a card (:func:`card`); "" when it has no figure."""
    what, dice = holdout_dice(values)
    if dice is None:
        return ""
    cases = values["holdout"].get("cases")
    return f"{what} {dice:.2f}" + (f" ({cases} cases)" if cases else "")


def describe(name: str) -> str:
    """One line for lists, e.g. "acdc-cardiac: cardiac cine MRI, 2D, right ventricle / myocardium /
    left ventricle, hold-out Dice 0.81 (20 cases)"."""
    values = card(name)
    parts = [values["modality"] or values["title"], f"{values['dim']}D", class_list(values["classes"]),
             dice_text(values) or "no hold-out figure"]
    return f"{name}: " + ", ".join(p for p in parts if p)


def sha256(file) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------ making a card (benchmarks/bundle_model.py)
def write_card(path, card: Mapping) -> None:
    """Write ``card`` to ``path`` as UTF-8 JSON, atomically (the packaging and rescoring tools)."""
    from .outputs import atomic_write

    with atomic_write(path) as f:
        f.write((json.dumps(card, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def holdout_from_summary(summary: Mapping, class_names: Sequence[str],
                         case_names: Sequence[str] = ()) -> dict:
    """The card's hold-out entry, from a ``benchmarks/accuracy.py`` summary: which split was scored,
    whether it is independent (accuracy.py selects the model on "val" when the data has it, so a "val"
    score is not), the mean Dice of each view of the trained arm and the headline view's Dice per class."""
    arm, split = summary["arm"], summary["eval_split"]
    prefix = f"{arm} "
    views = {key[len(prefix):]: result for key, result in summary["results"].items() if key.startswith(prefix)}
    if HEADLINE_VIEW not in views:
        raise CVBMInputError(f"the run's summary.json has no {prefix + HEADLINE_VIEW!r} result "
                             f"(it has {', '.join(summary['results']) or 'none'})")
    per_class = {class_names[int(c)] if int(c) < len(class_names) else str(c): metrics["dice"]
                 for c, metrics in views[HEADLINE_VIEW]["classes"].items()}
    independent = split != "val"
    dataset = Path(str(summary.get("data", ""))).name or "the data"
    cases = views[HEADLINE_VIEW]["num_cases"]
    if split == "holdout":
        declaration = (f"{cases} cases of {dataset} declared before training (benchmarks/accuracy.py): "
                       f"never trained on, not used to select the model")
    elif independent:
        declaration = (f"the {cases} cases of {dataset}'s {split!r} split: never trained on, not used to "
                       f"select the model")
    else:
        declaration = (f"the {cases} cases of {dataset}'s 'val' split, which also selected the model: "
                       f"not an independent hold-out")
    return {"split": split, "cases": cases, "case_names": list(case_names), "independent": independent,
            "declaration": declaration, "view": HEADLINE_VIEW,
            "dice": {view: result["mean"]["dice"] for view, result in views.items()},
            "dice_per_class": per_class,
            "metrics_unit": "voxels (whole images, each on its own grid)"}


def make_card(name: str, config: TrainConfig, summary: Mapping, *, title: str, data_terms: str,
              intended_use: str, modality: str = "", limitations: str = "", command: str = "", licence: str = "",
              case_names: Sequence[str] = (), file_bytes: int = 0, file_sha256: str = "") -> dict:
    """The card of bundled model ``name`` (``config`` names its classes) from its run's ``summary``.

    ``licence``: the weights' licence (an SPDX id, or text; what a bioimage.io export declares); by
    default the data terms, since the weights inherit them."""
    from .. import __version__

    if not config.class_names:
        raise CVBMInputError(f"bundled model {name!r}: its config must name its classes (class_names)")
    planned = PLANNED.get(name, {})
    modality = modality or planned.get("modality", "")
    return {
        "card_version": CARD_VERSION, "name": name, "title": title or planned.get("title", name),
        "modality": modality,
        "task": f"semantic segmentation: {config.num_classes} classes, one per "
                f"{'voxel' if config.dim == 3 else 'pixel'}",
        "dim": config.dim, "classes": list(config.class_names),
        "channels": {"count": config.in_channels, "names": list(config.channel_names or ())},
        "input": {"spacing_mm": list(config.spacing) if config.spacing else None,
                  "spacing_note": ("images are resampled to this spacing and the result back to theirs"
                                   if config.spacing else "each image is used at its own spacing"),
                  "patch_size": list(config.patch_size),
                  "slice_size": list(config.slice_size) if config.slice_size else None,
                  "plan": summary.get("plan", "")},
        "data": {"dataset": Path(str(summary.get("data", ""))).name, "labeled": summary.get("labeled"),
                 "terms": data_terms},
        "licence": licence or data_terms,
        "tags": ["napari-cvbm", f"{config.dim}d", *([modality] if modality else []), *config.class_names[1:]],
        "training": {"command": command, "arm": summary.get("arm"), "scale": summary.get("scale"),
                     "iterations": {"pretrain": config.pretrain_iterations, "selftrain": config.selftrain_iterations},
                     "seconds": summary.get("train_seconds"), "precision": summary.get("precision"),
                     "selection_dice": summary.get("selection_dice"),
                     "largest_component": config.largest_component},
        "holdout": holdout_from_summary(summary, config.class_names, case_names),
        "intended_use": intended_use, "limitations": limitations or DEFAULT_LIMITATIONS,
        "file": {"name": f"{name}{SUFFIX}", "bytes": file_bytes, "sha256": file_sha256, "dtype": "float16"},
        "napari_cvbm_version": __version__,
    }
