"""`cvbm` command line: train, predict, evaluate, export (bioimage.io) and the headless demo.

Every bad input ends with one ``cvbm: error: ...`` line and exit code 2, never a traceback.
"""

import argparse
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

from tqdm import tqdm

from .core.errors import CVBMInputError, CVBMNotice


def _given_settings(args) -> dict:
    """The settings the user gave (``--set``, ``--dim``, ``--num-classes``), each checked on its own;
    a flag and a ``--set`` of the same setting must agree."""
    from .core.config import check_settings, parse_setting

    given = dict(parse_setting(s) for s in args.set)
    for flag, key in (("--dim", "dim"), ("--num-classes", "num_classes")):
        value = getattr(args, key)
        if value is not None and given.setdefault(key, value) != value:
            raise CVBMInputError(f"{flag} {value} and --set {key}={given[key]} disagree; give one of them")
    check_settings(given)
    return given


CHANNEL_HELP = ("for images with several channels or time frames: the one to use, from 0, or 'all' to use "
                "every channel as the model's input (e.g. MRI sequences); colour photographs use their "
                "red, green and blue channels unless one is chosen")
MASK_HELP = ("folder of field-of-view masks (same case names, non-zero = inside, e.g. a fundus photograph's "
             "disc): pixels outside are {}")


def _channel(text: str):
    """--channel: an index from 0, or 'all'."""
    if text.lower() == "all":
        return "all"
    try:
        index = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a channel index from 0 or 'all', not {text!r}") from None
    if index < 0:
        raise argparse.ArgumentTypeError(f"a channel index counts from 0, not {index}")
    return index
THREADS_HELP = ("CPU threads (default: OMP_NUM_THREADS if set, else the cores other processes leave free, "
                "looked at again while training; see docs/PERFORMANCE.md)")


def _use_threads(args, say) -> int:
    """Apply the CPU thread policy (``core/threads.py``) with the user's ``--threads``; says the count."""
    from .core.threads import explicit_threads, use_training_threads

    threads = use_training_threads(background=False, threads=args.threads)
    source = "--threads" if args.threads is not None else "OMP_NUM_THREADS" if explicit_threads() else "free cores"
    say(f"CPU threads: {threads} ({source})")
    return threads


def cmd_train(args) -> int:
    from .core import distributed

    distributed.init_from_environment()  # torchrun: one process per GPU (or CPU worker)
    try:
        with _claim_out(args):
            return _train(args)
    finally:
        distributed.finish()


def _claim_out(args):
    """Rank 0 (the only writer) holds --out for the whole run; refuses a folder in use or holding a run."""
    from contextlib import nullcontext

    from .core import distributed
    from .core.outputs import run_folder

    if not distributed.is_main_process():
        return nullcontext()
    return run_folder(args.out, resume=args.resume, overwrite=args.overwrite)


def _initial_model(args, given: dict):
    """--init: (the model's weights, the settings fine-tuning it keeps: ``core.planning.fine_tune_overrides``,
    with --preset all of its input, and those of keeping it as the teacher: ``core.fine_tuning.teacher_kept``,
    which settings given win over); (None, {}, {}) without it. A given setting that differs from what
    the model keeps is refused."""
    if not args.init:
        return None, {}, {}
    if args.resume:
        raise CVBMInputError("--init starts a new run from a model and --resume continues a run; give one of them")
    from .core.fine_tuning import teacher_kept
    from .core.model_source import open_model
    from .core.planning import fine_tune_overrides

    model, config = open_model(args.init)
    keeps = fine_tune_overrides(config)
    if args.preset:
        keeps.update(config.model_input())
    clash = [f"{k} {given[k]!r} (the model's: {keeps[k]!r})" for k in given if k in keeps and given[k] != keeps[k]]
    if clash:
        raise CVBMInputError(f"--init {args.init} fixes {'; '.join(clash)}: leave them out to fine-tune it")
    return model.state_dict(), keeps, teacher_kept(config)


def _train(args) -> int:
    from dataclasses import replace

    from .console import train_with_progress
    from .core import distributed
    from .core.classes import infer_num_classes
    from .core.config import preset
    from .core.data import load_cases
    from .core.training import TrainingRun

    main_process = distributed.is_main_process()
    say = print if main_process else (lambda *a, **k: None)

    given = _given_settings(args)
    weights, keeps, teacher = _initial_model(args, given)
    teacher = {k: v for k, v in teacher.items() if k not in given}
    given = {**teacher, **given, **keeps}
    if isinstance(given.get("class_names"), tuple):  # --set class_names=background,...: that many classes
        given.setdefault("num_classes", len(given["class_names"]))
    if args.init:
        say(f"fine-tuning {args.init}; it keeps {', '.join(keeps)}" + (
            f"; it stays the teacher ({', '.join(f'{k}={v:g}' for k, v in teacher.items())})" if teacher else ""))
    if args.budget is not None and not args.budget > 0:
        raise CVBMInputError(f"--budget must be a positive number of minutes, not {args.budget:g}")
    if not args.resume:  # the whole configuration is checked before any data is read
        config = preset(args.preset or "cpu", given.get("dim", 3), **given)
    threads = _use_threads(args, say)
    read = dict(channel=args.channel, mask_dir=args.mask)
    labeled = load_cases(args.images, args.labels, given.get("num_classes"), annotated_dir=args.annotated, **read)
    if not labeled:
        raise CVBMInputError("empty labeled set")
    num_classes = infer_num_classes((c.label for c in labeled), given.get("num_classes"))
    unlabeled = load_cases(args.unlabeled, **read) if args.unlabeled else []
    validation = load_cases(args.val_images, args.val_labels, num_classes, **read) if args.val_images else []
    if args.resume:
        run = TrainingRun.resume(args.resume, labeled, unlabeled, validation, out_dir=args.out, device=args.device,
                                 overrides=given, preset_name=args.preset)
        say(f"resuming {run.phase} at iteration {run.iteration} from {args.resume}")
        for change in run.resume_changes:
            say(f"resume: {change}")
    else:
        config = replace(config, num_classes=num_classes)
        if not args.preset:  # planned from the data (core/planning.py); --set still wins
            from .core.device import choose_device
            from .core.planning import plan

            planned = plan(labeled, unlabeled, distributed.local_device(choose_device(args.device)),
                           budget_s=None if args.budget is None else 60 * args.budget,
                           overrides={**given, "num_classes": num_classes}, validation=validation)
            config = planned.config
            say(f"plan: {planned.describe()}")
        run = TrainingRun(config, labeled, unlabeled, validation, out_dir=args.out, device=args.device,
                          initial_weights=weights)
    say(f"{len(labeled)} labeled, {len(unlabeled)} unlabeled, {len(validation)} validation image(s); "
        f"device {run.device} ({run.precision}, {'channels-last' if run.channels_last else 'contiguous'} layout); "
        f"writing to {args.out}")
    if run.layout_seconds:
        say(f"layout measured on {run.device}: " + ", ".join(
            f"{layout} {1000 * seconds:.1f} ms" for layout, seconds in run.layout_seconds.items()) + " a step")
    if distributed.is_distributed():
        say(f"distributed: {distributed.world_size()} processes, each sampling its own patches")
    train_with_progress(run, show=main_process, threads=args.threads, current=threads)
    if distributed.is_distributed():
        agree = all(distributed.weights_agree(m, run.device) for m in (run.model, run.teacher) if m is not None)
        say(f"ranks hold identical student and teacher weights: {'yes' if agree else 'NO'}")
        if not agree:
            raise CVBMInputError("distributed ranks diverged; the checkpoint was not written")
    if not main_process:
        return 0
    from .core.checkpoint import save_model

    final = save_model(Path(args.out) / "model.pt", run.final_model(), run.config, phase="final",
                       validation_dice=run.best_dice)
    note = f"validation Dice {run.best_dice:.4f}" if run.best_dice >= 0 else "no validation set: last weights"
    say(f"saved {final} ({note})")
    return 0


FG_MAPS = ("prob_fg", "confidence_fg")  # --probabilities: maps of every model, then of two-branch ones
BG_MAPS = ("prob_bg", "prob_mix", "confidence_bg", "disagreement")


PHOTO_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _prediction_paths(path: Path, out: Path, fmt: Optional[str], maps) -> dict:
    """Where the label map ("labels": OUT/<case><ext>, paired by case name) and each map (OUT/maps/) of
    ``path`` go. A photograph's labels are PNG (JPEG would change their values) and its maps TIFF."""
    from .core.io import strip_extension

    name = strip_extension(path)
    suffix = fmt or path.name[len(name):]
    photo = suffix.lower() in PHOTO_EXTENSIONS
    labels, maps_suffix = (".png", ".tif") if photo else (suffix, suffix)
    return {"labels": out / f"{name}{labels}", **{key: out / "maps" / f"{name}_{key}{maps_suffix}" for key in maps}}


MODEL_HELP = ("a bundled model's name (see `cvbm models`), a checkpoint (.pt) written by cvbm train or the "
              "napari plugin, or a bioimage.io package")


def _model_and_input(args):
    """(model source, input path) of `cvbm predict`: MODEL INPUT, or --model MODEL and INPUT."""
    paths = [p for p in (args.model, args.input) if p is not None] + list(getattr(args, "more_paths", ()))
    if args.model_option is not None:
        if len(paths) != 1:
            raise CVBMInputError(f"with --model {args.model_option}, give one image file or folder, not "
                                 f"{len(paths)} ({' '.join(paths)})")
        return args.model_option, Path(paths[0])
    if len(paths) != 2:
        given = f", not {' '.join(paths)}" if paths else ""
        raise CVBMInputError(f"give the model and the image file or folder (cvbm predict MODEL INPUT, or "
                             f"cvbm predict --model MODEL INPUT){given}")
    return paths[0], Path(paths[1])


def cmd_models(args) -> int:
    """`cvbm models`: the bundled models, one line each; `cvbm models NAME`: its model card."""
    import json

    from .core import bundled

    if args.name:
        print(json.dumps(bundled.card(args.name), indent=2, ensure_ascii=False))
        return 0
    names = bundled.names()
    if not names:
        print(f"no bundled models (in {bundled.models_dir()})")
    for name in names:
        print(bundled.describe(name))
    return 0


def cmd_predict(args) -> int:
    from .core.guidance import suggestions, write_ranking
    from .core.io import IMAGE_EXTENSIONS, list_images, read_image, read_mask, strip_extension, write_image
    from .core.outputs import check_outputs, check_writable
    from .core.predictor import Predictor

    model, source = _model_and_input(args)
    _use_threads(args, print)
    predictor = Predictor.load(model)
    if predictor.config.class_names:
        print("classes: " + ", ".join(f"{i} {n}" for i, n in enumerate(predictor.config.class_names)))
    files = [source] if source.is_file() else list_images(source)
    if not files:
        raise CVBMInputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {source}")
    maps = (FG_MAPS + (BG_MAPS if predictor.model.background_branch else ())) if args.probabilities else ()
    planned = {path: _prediction_paths(path, Path(args.out), args.format, maps) for path in files}
    outputs = {path: list(paths.values()) for path, paths in planned.items()}
    ranking, rankings = Path(args.out) / "ranking.csv", {}
    if args.ranking:  # one file for every image, checked with the first image's outputs
        outputs[files[0]].append(ranking)
    check_outputs(outputs, overwrite=args.overwrite, case=strip_extension)
    for folder in sorted({target.parent for paths in planned.values() for target in paths.values()}):
        check_writable(folder)
    heads = "fg" if args.mode == "fg" and not (args.probabilities or args.ranking) else "all"
    views = _masks_by_case(args.mask)
    for path, paths in tqdm(planned.items(), desc="predict", unit="image", disable=len(files) < 2):
        image = read_image(path, channel=args.channel)
        valid = read_mask(views.get(strip_extension(path)), image, path)
        pred = predictor(image.array, spacing=image.spacing, channels=image.channel_names, valid=valid, mode=args.mode,
                         heads=heads, device=args.device, largest_component=args.largest_component,
                         amp=not args.float32)
        geometry = dict(geometry=image.geometry)
        write_image(paths["labels"], pred.labels, **geometry)
        if args.probabilities:
            arrays = {"prob_fg": 1.0 - pred.fg[0], "confidence_fg": pred.fg_confidence}
            if pred.bg is not None:
                arrays.update(prob_bg=1.0 - pred.bg[0], prob_mix=1.0 - pred.mix[0],
                              confidence_bg=pred.bg_confidence, disagreement=pred.disagreement)
            for key, array in arrays.items():
                write_image(paths[key], array, **geometry)
        if args.ranking:  # rewritten after each image: it always covers the label maps written
            rankings[strip_extension(path)] = suggestions(pred, predictor.config, image.spacing)
            write_ranking(ranking, rankings)
        print(f"{path.name} -> {paths['labels']}")
    if args.ranking:
        print(f"slices (regions of 2D images) ranked by uncertainty -> {ranking}")
    return 0


def _masks_by_case(folder) -> dict:
    """--mask: the field-of-view mask files of ``folder`` by case name (none without a folder)."""
    from .core.io import list_images, strip_extension

    return {strip_extension(path): path for path in list_images(folder)} if folder else {}


def _quoted(names: List[str]) -> str:
    shown = ", ".join(f"'{name}'" for name in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _evaluation_pairs(args) -> list:
    """(prediction, label) paths by case. Every prediction needs a label, and every label a prediction
    unless --only-predicted (then it prints, above the table, how many labelled cases are scored)."""
    from .core.io import list_images, pair_images_labels, strip_extension

    pairs = pair_images_labels(args.predictions, args.labels)
    predicted = {strip_extension(label) for _, label in pairs}
    labelled = [strip_extension(path) for path in list_images(args.labels)]
    missing = [name for name in labelled if name not in predicted]
    if missing and not args.only_predicted:
        raise CVBMInputError(f"no prediction in {args.predictions} for {len(missing)} of {len(labelled)} labelled "
                             f"cases: {_quoted(missing)}; predict them, or pass --only-predicted to score "
                             f"the {len(pairs)} predicted cases alone")
    if missing:
        print(f"{len(pairs)} of {len(labelled)} labelled cases (no prediction for {_quoted(missing)})")
    return pairs


def cmd_evaluate(args) -> int:
    from .core.classes import infer_num_classes, interpret_labels
    from .core.io import check_aligned, read_labels, read_mask, strip_extension
    from .core.metrics import evaluate_cases, format_table, summarize, write_csv
    from .core.outputs import refuse_existing

    if args.csv:
        refuse_existing(args.csv, args.overwrite)
    pairs = _evaluation_pairs(args)
    truths = {label: read_labels(label) for _, label in pairs}
    preds = {}
    for pred, label in pairs:
        prediction = read_labels(pred)
        check_aligned(truths[label], prediction, label, pred)
        preds[pred] = prediction.array
    labels = interpret_labels({path: truth.array for path, truth in truths.items()}, args.num_classes)
    preds = interpret_labels(preds, args.num_classes, what="prediction file")
    num_classes = infer_num_classes([*preds.values(), *labels.values()], args.num_classes)
    views = _masks_by_case(args.mask)
    loaded = [(strip_extension(pred), preds[pred], labels[label], truths[label].spacing if args.mm else None,
               read_mask(views.get(strip_extension(label)), truths[label], label)) for pred, label in pairs]
    rows = evaluate_cases(loaded, num_classes)
    summary = summarize(rows)
    print(format_table(summary, distance_unit="mm" if args.mm else "vox"))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"per-case metrics written to {args.csv}")
    return 0


def cmd_export(args) -> int:
    """`cvbm export MODEL OUT.zip`: the model as a bioimage.io model package (``core.bioimageio``)."""
    from .core import bundled
    from .core.bioimageio import export_package, package_name
    from .core.outputs import refuse_existing
    from .core.predictor import Predictor

    refuse_existing(args.out, args.overwrite)  # before the model is read
    predictor = Predictor.load(args.model)  # as `cvbm predict` opens it: a bundled name, a package or a file
    card = bundled.card(args.model) if bundled.is_name(args.model) else None
    name = args.name or package_name((card or {}).get("title") or f"CVBM {Path(args.model).stem}")
    path = export_package(predictor.model, predictor.config, args.out, name=name, description=args.description,
                          authors=args.author or None, card=card, overwrite=args.overwrite)
    print(f"bioimage.io model package '{name}' -> {path}")
    return 0


def cmd_demo(args) -> int:
    from .core.config import parse_setting
    from .demo import run_demo

    run_demo(data_dir=args.data, out_dir=args.out, preset_name=args.preset,
             overrides=dict(parse_setting(s) for s in args.set), device=args.device)
    return 0


def cmd_gui(args) -> int:
    from .launch import main as launch

    return launch()


def _add_compute_options(p: argparse.ArgumentParser) -> None:
    """What a command computes on and reads: --device, --channel, --threads."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--channel", type=_channel, help=CHANNEL_HELP)
    p.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvbm", description="CVBM semi-supervised segmentation (headless).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="pre-train the teacher, then self-train the student")
    p.add_argument("--images", required=True, help="folder of labeled images")
    p.add_argument("--labels", required=True, help="folder of label maps (same case names)")
    p.add_argument("--annotated", help="folder of masks (same case names, non-zero = annotated) for partly "
                                       "labeled volumes: only those voxels count as labeled")
    p.add_argument("--unlabeled", help="folder of unlabeled images")
    p.add_argument("--mask", help=MASK_HELP.format("neither supervised nor pseudo-labelled (labeled, unlabeled "
                                                   "and validation images)"))
    p.add_argument("--val-images", help="validation images (model selection)")
    p.add_argument("--val-labels", help="validation labels")
    p.add_argument("--dim", type=int, choices=(2, 3),
                   help="3 (default): V-Net on patches; 2: U-Net on slices")
    p.add_argument("--preset", choices=("cpu", "paper"),
                   help="train with a preset as it is (default: plan the spacing, patch and steps from the data)")
    p.add_argument("--budget", type=float, metavar="MINUTES",
                   help="training time the plan sizes the step counts for (default: 10 on a CPU; on a GPU "
                        "the paper's counts)")
    p.add_argument("--num-classes", type=int, help="classes including background (default: from labels)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set pretrain_iterations=500 --set patch_size=32,64,64")
    p.add_argument("--out", required=True, help="output folder for checkpoints")
    p.add_argument("--resume", help="training checkpoint (last.pt) to continue from; --set may change the "
                                    "iteration counts, validate_every, checkpoint_every, amp, compile, channels_last")
    p.add_argument("--init", metavar="MODEL",
                   help=f"fine-tune this model ({MODEL_HELP}): start from its weights, keeping its network, "
                        "class names and, when it has one, its working spacing or slice size; it stays the "
                        "teacher, held fixed, and its student learns at a tenth of its lr (--set "
                        "pretrain_iterations, ema_decay or lr changes that)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoints of an earlier run in --out (default: refuse)")
    _add_compute_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="segment an image or a folder of images")
    p.add_argument("model", nargs="?", metavar="MODEL", help=f"{MODEL_HELP} (or give it with --model)")
    p.add_argument("input", nargs="?", metavar="INPUT", help="image file or folder")
    p.add_argument("--model", dest="model_option", metavar="MODEL", help="the model, as MODEL")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mode", default="fg", choices=("fg", "mix", "avg"))
    p.add_argument("--probabilities", action="store_true",
                   help="also write probability, confidence and disagreement maps (to OUT/maps/)")
    p.add_argument("--ranking", action="store_true",
                   help="also write OUT/ranking.csv: every image's slices (axis 0; square regions of a 2D "
                        "image), most uncertain first (columns case, slice, rows, columns, score, rank; "
                        "score: expected wrongly labelled voxels)")
    p.add_argument("--mask", help=MASK_HELP.format("background in the labels and maps"))
    p.add_argument("--largest-component", action=argparse.BooleanOptionalAction,
                   help="keep (or not) only the largest component per class (default: the model's setting, "
                        "decided on validation when it was trained)")
    p.add_argument("--format", choices=(".nii.gz", ".nii", ".tif", ".tiff", ".png"),
                   help="output format (default: the input's; PNG labels and TIFF maps for a .png/.jpg input)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing outputs (default: refuse; an input is never replaced)")
    p.add_argument("--float32", action="store_true",
                   help="float32 throughout (default: bfloat16 mixed precision on GPUs and CPUs that support it)")
    _add_compute_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="the bundled models (ready to segment with), or one's model card")
    p.add_argument("name", nargs="?", help="a bundled model: print its model card (JSON)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("evaluate", help="Dice, Jaccard, 95HD and ASD of predictions against labels")
    p.add_argument("predictions", help="folder of predicted label maps")
    p.add_argument("labels", help="folder of reference label maps (same case names)")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--mask", help=MASK_HELP.format("not scored"))
    p.add_argument("--only-predicted", action="store_true",
                   help="score the labelled cases that have a prediction (default: every labelled case needs one)")
    p.add_argument("--mm", action="store_true", help="distances in mm from the label spacing (default: voxels)")
    p.add_argument("--csv", help="write per-case, per-class metrics to this CSV file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --csv file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="write a model as a bioimage.io model package (.zip) that other tools run")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("out", help="the package to write (.zip)")
    p.add_argument("--name", help="the package's name (letters, digits, spaces, _+-(); default: from MODEL)")
    p.add_argument("--description", default="", help="one or two sentences on what the model segments")
    p.add_argument("--author", action="append", default=[], metavar="NAME",
                   help="an author (repeat for several; default: napari-cvbm)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT (default: refuse)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="the headless main job on the bundled sample data")
    p.add_argument("--data", help="sample data folder (default: the bundled sample_data/)")
    p.add_argument("--out", default="demo_output", help="output folder")
    p.add_argument("--preset", default="cpu", choices=("cpu", "paper"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("gui", help="open napari with the CVBM widgets and the sample data (needs napari)")
    p.set_defaults(func=cmd_gui)
    return parser


@contextmanager
def _notes_on_stderr():
    """Print each distinct CVBMNotice once, as ``cvbm: note: ...`` on stderr; other warnings as usual."""
    seen = set()
    with warnings.catch_warnings():
        warnings.simplefilter("always", CVBMNotice)
        show = warnings.showwarning

        def note(message, category, *args, **kwargs):
            if not issubclass(category, CVBMNotice):
                return show(message, category, *args, **kwargs)
            if str(message) not in seen:
                seen.add(str(message))
                print(f"cvbm: note: {message}", file=sys.stderr)

        warnings.showwarning = note
        yield


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.func is cmd_predict and not any(e.startswith("-") for e in extra):
        args.more_paths = extra  # `predict MODEL --out OUT INPUT`: argparse leaves a later positional over
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        with _notes_on_stderr():
            return args.func(args)
    except CVBMInputError as exc:
        print(f"cvbm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cvbm: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"cvbm: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
