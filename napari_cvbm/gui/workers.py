"""What runs in the widgets' worker threads, and the typed updates it sends to the GUI thread.

Worker bodies only compute: they read snapshots taken on the GUI thread and never touch a layer,
a widget or a status object. A fine-tune is a generator of :class:`Planned` (when its plan is made
in the worker), :class:`RunReady` then one :class:`StepDone` per training step
(``TrainingRun.events``, spec 5-6), so Cancel stops it between two steps; a segmentation returns
its ``Prediction`` and reports progress through a callback; :func:`planned` returns a ``Plan``.
"""

import dataclasses
import functools
from typing import Callable, Iterator, Optional, Union

import numpy as np

from ..core.channels import channel_count
from ..core.classes import infer_num_classes
from ..core.config import TrainConfig
from ..core.data import Case, load_cases, make_case
from ..core.errors import CVBMInputError
from ..core.planning import Plan, plan
from ..core.predictor import Predictor
from ..core.threads import adapt_threads, use_training_threads
from ..core.training import ProgressEvent, TrainingRun

VALIDATIONS = 10  # held-out checks in a run on layers, about


class JobFailed(Exception):
    """An unexpected error inside a generator worker, carried as one line (superqt's generator
    workers drop a RuntimeError, which torch raises, so every other error is wrapped in this one)."""


def surfacing_errors(body):
    """Decorate a generator worker body: input errors pass as they are, others become
    :class:`JobFailed` so that they reach the widget's error handler (a function worker reports
    every error itself)."""

    @functools.wraps(body)
    def generator(*args, **kwargs):
        try:
            return (yield from body(*args, **kwargs))
        except CVBMInputError:
            raise
        except Exception as exc:
            raise JobFailed(f"{type(exc).__name__}: {exc}") from exc

    return generator


@dataclasses.dataclass(frozen=True)
class Planned:
    """The worker has planned the run (the plan shown before was stale or missing)."""

    plan: Plan


@dataclasses.dataclass(frozen=True)
class RunReady:
    """The worker has built the training run (cases prepared, network on its device)."""

    run: TrainingRun


@dataclasses.dataclass(frozen=True)
class StepDone:
    """One training step has finished."""

    event: ProgressEvent


TrainingUpdate = Union[Planned, RunReady, StepDone]


def planned(labeled, unlabeled, device, budget_s: float, overrides: dict) -> Plan:
    """``core.planning.plan`` of these cases, its training step measured on the CPU threads a run in
    the background gets (``core.threads``)."""
    use_training_threads(background=True)
    return plan(labeled, unlabeled, device, budget_s, overrides)


@surfacing_errors
def training_updates(build: Callable[[TrainConfig], TrainingRun], config: Optional[TrainConfig],
                     planner: Optional[Callable[[], Plan]] = None) -> Iterator[TrainingUpdate]:
    """Build the run with ``config`` (None: plan it with ``planner`` first and yield :class:`Planned`),
    then yield one update per step; stops when the consumer does."""
    if config is None:
        made = planner()
        yield Planned(made)
        config = made.config
    run = build(config)
    yield RunReady(run)
    for event in adapt_threads(run.events(), background=True):  # a core stays with the viewer
        yield StepDone(event)


def segmentation(predictor: Predictor, image: np.ndarray, **options):
    """The prediction of ``image`` (a snapshot of the layer) with ``predictor``'s settings, on the
    CPU threads the viewer leaves free (``core.threads``)."""
    use_training_threads(background=True)
    return predictor(image, **options)


def input_channels(cases) -> dict:
    """The TrainConfig channel settings of a new network for ``cases``: those of the first (the run
    refuses any other case whose channels differ)."""
    names = cases[0].channel_names
    return {"in_channels": channel_count(names), "channel_names": names or None}


# -- run builders (called in the worker thread) ---------------------------------------------------
def run_from_arrays(labeled, unlabeled, config: TrainConfig, weights=None, validation=()) -> TrainingRun:
    """A run on layer snapshots, ``Case``s of the layers' own data (``TrainingDataPanel.snapshot``):
    labeled and validation cases (e.g. a ``core.holdout.split_corrections`` of them) and unlabeled
    ones. The cases of one image share its normalised copy; with validation cases the run checks on
    them about ``VALIDATIONS`` times."""
    if validation:
        total = config.pretrain_iterations + config.selftrain_iterations
        config = dataclasses.replace(config, validate_every=max(1, round(total / VALIDATIONS)))
    made = {}

    def prepared(case: Case) -> Case:
        key = (id(case.image), id(case.label))
        if key not in made:
            made[key] = made_case(case, config.num_classes)
            return made[key]
        valid, annotated = made[key].valid, case.annotated  # as make_case bounds it by the field of view
        if valid is not None:
            annotated = valid if annotated is None else annotated & valid
        return dataclasses.replace(made[key], name=case.name, annotated=annotated)

    labeled_cases, validation_cases = [prepared(c) for c in labeled], [prepared(c) for c in validation]
    unlabeled_cases = [made_case(c) for c in unlabeled]
    return TrainingRun(config, labeled_cases, unlabeled_cases, validation_cases, initial_weights=weights)


def made_case(case: Case, num_classes=None) -> Case:
    """``make_case`` of a snapshot ``case``: validated and normalised."""
    return make_case(case.name, case.image, case.label, annotated=case.annotated, spacing=case.spacing,
                     num_classes=num_classes, channel_names=case.channel_names, valid=case.valid)


def run_from_folders(folders: dict, config: TrainConfig, weights=None) -> TrainingRun:
    """A run on the files of ``folders`` (images, labels, unlabeled); a new network takes its class
    count from the labels and its channels from the images."""
    new_network = weights is None
    labeled = load_cases(folders["images"], folders["labels"],
                         num_classes=None if new_network else config.num_classes)
    unlabeled = load_cases(folders["unlabeled"]) if folders["unlabeled"] else []
    if new_network:
        config = dataclasses.replace(config, num_classes=infer_num_classes(c.label for c in labeled),
                                     **input_channels(labeled))
    return TrainingRun(config, labeled, unlabeled, initial_weights=weights)
