r"""A simulated annotator replays the annotation loop: Segment, pick slices, correct them, Fine-tune.

    python benchmarks/annotation_loop.py ../shared/data/la --volumes 2 --rounds 2 --per-round 8 --budget 15 \
        --out runs/loop_la
    python benchmarks/annotation_loop.py ../shared/data/acdc --labeled 3 --rounds 2 --per-round 12 --budget 12 \
        --out runs/loop_acdc

The annotator works on the first ``--volumes`` "train" cases, or on the protocol's labeled set
(``--labeled 3``: ACDC's 6 volumes of 3 patients). Each round it picks ``--per-round`` new axial
slices, shared out evenly over its volumes, "corrects" them (their ground truth; nothing else of the
volume counts) and fine-tunes the current model on everything corrected so far plus the unlabeled
pool, through the engine calls the widgets make: ``core.guidance.rank_slices`` on the Segment
prediction, the Fine-tune widget's held-out split of the corrections and its plan for the round's
share of ``--budget`` minutes (``core.fine_tuning``), and the widget's rule of keeping the previous
model when the held-out Dice fell (``core.holdout.got_worse``).

Strategies:

* ``guided``: the top of the "Slices to correct next" list of each volume, segmented by the
  current model;
* ``even``: the slices farthest from those already corrected, inside the range of slices that
  hold the structure (which an annotator sees);
* ``random``: random slices inside that range.

From scratch (``--start scratch``) there is no model to guide the first round, so every strategy
shares one first round of evenly spread slices; from a model (``--start`` a bundled model's name such
as ``acdc-cardiac``, ``starter`` for the synthetic starter model, or a checkpoint) the strategies
differ from the first round; a trained model (not the synthetic starter) stays the teacher of
every round, as the widget keeps it (``core.fine_tuning.teacher_kept``). ``--correct-from val``
(ACDC) has the annotator correct the first ``--volumes`` "val" cases, patients no bundled model was
trained on, and scores on the other "val" cases. Unlabeled pool: every other "train" case outside
the evaluation set (LA: the last 16 "train" cases, the hold-out of ``accuracy.py``, and
its 4 selection cases are left out; ACDC: scored on "val"). After each round the fg head is scored
on whole evaluation volumes, each on its own grid. Writes ``rounds.csv`` (one row per strategy and
round: slices corrected, cumulative training minutes, the steps its plan gave, Dice, whether the
round's model was kept; from a model, round 0 is that model before any correction), ``rounds.png``
(Dice against slices and against minutes) and ``summary.json`` to ``--out``. Each fine-tune plans
from its own measured step, as each click in the widget does, so strategies of one round may get
somewhat different step counts.
"""

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from napari_cvbm.console import train_with_progress
from napari_cvbm.core.classes import infer_num_classes
from napari_cvbm.core.config import parse_setting
from napari_cvbm.core.data import Case
from napari_cvbm.core.device import choose_device
from napari_cvbm.core.fine_tuning import held_out_checks, prepare_fine_tune, teacher_kept
from napari_cvbm.core.guidance import suggestions
from napari_cvbm.core.holdout import got_worse
from napari_cvbm.core.predictor import Predictor
from napari_cvbm.core.training import TrainingRun

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import HOLDOUT, SELECTION, cases, labeled_cases  # noqa: E402
from sparse_slices import corrected as corrected_case  # noqa: E402
from sparse_slices import holdout_dice, structure_range  # noqa: E402

STRATEGIES = ("guided", "even", "random")
STARTER = Path(__file__).resolve().parent.parent / "napari_cvbm" / "models" / "starter.pt"
COLUMNS = ("strategy", "round", "slices", "minutes", "steps", "dice", "kept", "held_out_before", "held_out_after",
           "picked")


def pick_even(label: np.ndarray, corrected: Sequence[int], count: int) -> List[int]:
    """``count`` slices of the structure's range, each the farthest from the corrected and already
    picked ones (and from the ends of the range: the first pick of an empty volume is its middle)."""
    candidates = structure_range(label)
    anchors = [candidates[0] - 1, candidates[-1] + 1, *corrected]
    picked: List[int] = []
    for _ in range(count):
        free = [z for z in candidates if z not in anchors]
        if not free:
            break
        distance = [min(abs(z - a) for a in anchors) for z in free]
        picked.append(int(free[int(np.argmax(distance))]))
        anchors.append(picked[-1])
    return picked


def pick_random(label: np.ndarray, corrected: Sequence[int], count: int, rng: np.random.Generator) -> List[int]:
    free = [int(z) for z in structure_range(label) if z not in set(corrected)]
    return sorted(rng.choice(free, size=min(count, len(free)), replace=False).tolist())


def pick_guided(predictor: Predictor, case: Case, corrected: Sequence[int], count: int) -> List[int]:
    """The first ``count`` rows of the Segment widget's "Slices to correct next" list."""
    prediction = predictor(case.image, spacing=case.spacing, heads="all", amp=predictor.config.amp)
    return [z for z, _ in suggestions(prediction, predictor.config, case.spacing, exclude=corrected, limit=count)]


def shares(total: int, parts: int) -> List[int]:
    """``total`` split into ``parts`` near-equal whole shares, the larger ones first."""
    return [total // parts + (i < total % parts) for i in range(parts)]


class Annotator:
    """One strategy's replay: its corrected slices per volume, its current model and its rows."""

    def __init__(self, strategy: str, volumes: Sequence[Case], seed: int = 0):
        self.strategy = strategy
        self.volumes = list(volumes)
        self.corrected: Dict[str, List[int]] = {c.name: [] for c in volumes}
        self.rng = np.random.default_rng(seed)
        self.rows: List[dict] = []
        self.minutes = 0.0

    def pick(self, count: int, model=None, config=None, strategy: Optional[str] = None) -> Dict[str, List[int]]:
        strategy = strategy or self.strategy
        predictor = Predictor(model, config) if strategy == "guided" else None
        picked = {}
        for case, k in zip(self.volumes, shares(count, len(self.volumes))):
            done = self.corrected[case.name]
            if strategy == "guided":
                picked[case.name] = pick_guided(predictor, case, done, k)
            elif strategy == "even":
                picked[case.name] = pick_even(case.label, done, k)
            else:
                picked[case.name] = pick_random(case.label, done, k, self.rng)
            done.extend(picked[case.name])
        return picked

    def labeled(self) -> List[Case]:
        return [corrected_case(c, self.corrected[c.name]) for c in self.volumes]

    def slices(self) -> int:
        return sum(len(s) for s in self.corrected.values())


def planned_fine_tune(labeled: List[Case], unlabeled: List[Case], config, budget_s: float, device: str,
                      overrides: dict, trained: bool):
    """(held-out split, plan) of a Fine-tune click from a model of ``config`` (None: a new network) with
    the settings ``overrides``, as the widget makes them (``core.fine_tuning``; a ``trained`` model stays
    the teacher); their seed (default 0, as the widget's seed field) picks what is held out."""
    fine = prepare_fine_tune(labeled, unlabeled, config, seed=overrides.get("seed", 0))
    kept = teacher_kept(config) if trained and config is not None else {}
    return fine.split, fine.plan(choose_device(device), budget_s, {**kept, **overrides})


def fine_tune(labeled: List[Case], unlabeled: List[Case], model, config, budget_s: float, device: str,
              overrides: dict, trained: bool = False):
    """One Fine-tune click, as the widget runs it (its own plan, from its own measured step; about ten
    held-out checks a run unless ``overrides`` give ``validate_every``): (model, config, minutes, steps
    "pretrain+selftrain", before, after, kept)."""
    split, planned = planned_fine_tune(labeled, unlabeled, config, budget_s, device, overrides, trained)
    print(f"  fine-tune on {sum(len(np.flatnonzero(c.annotated.any((1, 2)))) for c in split.train)} slices "
          f"(held out: {split.summary() or split.reason}); plan: {planned.describe()}", flush=True)
    weights = None if model is None else model.state_dict()
    checked = planned.config if "validate_every" in overrides else held_out_checks(planned.config, split.held_out)
    run = TrainingRun(checked, split.train, unlabeled, split.held_out, device=device, initial_weights=weights)
    start = time.perf_counter()
    train_with_progress(run, show=False)
    minutes = (time.perf_counter() - start) / 60
    before, after = run.initial_dice, run.final_dice
    steps = f"{run.config.pretrain_iterations}+{run.config.selftrain_iterations}"
    if model is not None and got_worse(before, after):
        return model, config, minutes, steps, before, after, False
    return run.final_model(), run.config, minutes, steps, before, after, True


def record(annotator: Annotator, round_: int, picked, result, eval_cases) -> dict:
    model, config, minutes, steps, before, after, kept = result
    annotator.minutes += minutes
    row = {"strategy": annotator.strategy, "round": round_, "slices": annotator.slices(),
           "minutes": round(annotator.minutes, 2), "steps": steps,
           "dice": round(100 * holdout_dice(model, config, eval_cases), 2),
           "kept": kept, "held_out_before": before, "held_out_after": after,
           "picked": " ".join(f"{name}:{','.join(map(str, z))}" for name, z in picked.items())}
    annotator.rows.append(row)
    print(f"  {annotator.strategy} round {round_}: {row['slices']} slices, {row['minutes']:.1f} min, "
          f"hold-out Dice {row['dice']:.2f}{'' if kept else ' (model kept from the round before)'}", flush=True)
    return row


def plot(rows: List[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.6), dpi=100)
    by_slices, by_minutes = figure.subplots(1, 2, sharey=True)
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == strategy]
        by_slices.plot([r["slices"] for r in mine], [r["dice"] for r in mine], "o-", label=strategy)
        by_minutes.plot([r["minutes"] for r in mine], [r["dice"] for r in mine], "o-", label=strategy)
    by_slices.set(xlabel="corrected slices", ylabel="hold-out Dice (fg head)")
    by_minutes.set(xlabel="training minutes (cumulative)")
    by_slices.legend()
    figure.tight_layout()
    figure.savefig(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--volumes", type=int, default=2, help="the annotator corrects the first N 'train' cases")
    parser.add_argument("--labeled", type=int, help="... or the protocol's labeled set of N (accuracy.py)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--per-round", type=int, default=8, help="slices corrected per round, over all volumes")
    parser.add_argument("--budget", type=float, default=15.0, metavar="MINUTES", help="training time of all rounds")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--start", default="scratch",
                        help="scratch, starter, a bundled model's name (e.g. acdc-cardiac) or a checkpoint")
    parser.add_argument("--correct-from", choices=("train", "val"), default="train",
                        help="the split whose first --volumes cases the annotator corrects (val: scored on the rest)")
    parser.add_argument("--dim", type=int, choices=(2, 3), help="default: 2 when the folder has 'val' (ACDC), else 3")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    strategies = args.strategies.split(",")
    if set(strategies) - set(STRATEGIES):
        parser.error(f"--strategies: choose from {', '.join(STRATEGIES)}")

    splits = json.loads((args.data / "splits.json").read_text())
    train = splits["train"]
    dim = args.dim or (2 if "val" in splits else 3)
    if args.correct_from == "val" and "val" not in splits:
        parser.error(f"{args.data} has no 'val' split")
    names = labeled_cases(splits, args.labeled) if args.labeled else splits[args.correct_from][:args.volumes]
    volumes = cases(args.data, names)
    num_classes = infer_num_classes(c.label for c in volumes)
    evaluated = [n for n in splits["val"] if n not in names] if "val" in splits else train[-HOLDOUT:]
    pool = train if "val" in splits else train[:-HOLDOUT - SELECTION]
    unlabeled = cases(args.data, [n for n in pool if n not in names], with_labels=False)
    eval_cases = cases(args.data, evaluated, num_classes=num_classes)
    overrides = {"dim": dim, "num_classes": num_classes, **dict(parse_setting(s) for s in args.set)}
    start_model = start_config = None
    if args.start != "scratch":
        from napari_cvbm.core.model_source import open_model

        start_model, start_config = open_model(STARTER if args.start == "starter" else args.start)
        if start_config.dim != dim or start_config.num_classes != num_classes:
            parser.error(f"the bundled model is a {start_config.dim}D network of {start_config.num_classes} "
                         f"classes; this data trains {dim}D with {num_classes}")
    budget_s = 60 * args.budget / args.rounds
    print(f"{args.data.name}: correcting {len(volumes)} volumes, {args.per_round} slices a round for "
          f"{args.rounds} rounds, {len(unlabeled)} unlabeled, scored on {len(eval_cases)} volumes; "
          f"{args.budget:g} min of training per strategy, from {args.start}", flush=True)

    annotators = [Annotator(s, volumes, seed=overrides.get("seed", 0)) for s in strategies]
    models = {}
    first = 1
    if args.start == "scratch":  # no model to guide the first picks: one shared first round, evenly spread
        lead = annotators[0]
        picked = lead.pick(args.per_round, strategy="even")
        print(f"round 1 (shared): {picked}", flush=True)
        result = fine_tune(lead.labeled(), unlabeled, None, None, budget_s, args.device, overrides)
        for annotator in annotators:
            annotator.corrected = {k: list(v) for k, v in lead.corrected.items()}
            record(annotator, 1, picked, result, eval_cases)
            models[annotator.strategy] = result[:2]
        first = 2
    else:  # round 0: the model as it starts, before any correction
        models = {a.strategy: (start_model, start_config) for a in annotators}
        dice = round(100 * holdout_dice(start_model, start_config, eval_cases), 2)
        print(f"round 0 ({args.start} as it is): hold-out Dice {dice:.2f}", flush=True)
        for annotator in annotators:
            annotator.rows.append({"strategy": annotator.strategy, "round": 0, "slices": 0, "minutes": 0.0,
                                   "steps": "", "dice": dice, "kept": True, "held_out_before": "",
                                   "held_out_after": "", "picked": ""})
    for round_ in range(first, args.rounds + 1):
        for annotator in annotators:
            model, config = models[annotator.strategy]
            picked = annotator.pick(args.per_round, model, config)
            print(f"round {round_}, {annotator.strategy}: {picked}", flush=True)
            result = fine_tune(annotator.labeled(), unlabeled, model, config, budget_s, args.device, overrides,
                               trained=args.start not in ("scratch", "starter"))
            record(annotator, round_, picked, result, eval_cases)
            models[annotator.strategy] = result[:2]

    rows = [row for a in annotators for row in a.rows]
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "rounds.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "rounds.png")
    (args.out / "summary.json").write_text(json.dumps(
        {"data": str(args.data), "start": args.start, "volumes": names, "per_round": args.per_round,
         "rounds": args.rounds, "budget_minutes": args.budget, "eval_volumes": len(eval_cases),
         "final": {a.strategy: a.rows[-1]["dice"] for a in annotators}, "rows": rows}, indent=2))
    print("final hold-out Dice: " + ", ".join(f"{a.strategy} {a.rows[-1]['dice']:.2f}" for a in annotators))
    return 0


if __name__ == "__main__":
    sys.exit(main())
