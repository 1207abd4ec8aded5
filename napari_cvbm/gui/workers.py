"""What runs in the widgets' worker threads, and the typed updates it sends to the GUI thread.

Worker bodies only compute: they read snapshots taken on the GUI thread and never touch a layer,
a widget or a status object. A fine-tune is a generator of :class:`DataRead` (a run on folders,
read in the worker), :class:`Planned` (when its plan is made in the worker), :class:`RunReady` then
one :class:`StepDone` per training step (``TrainingRun.events``, spec 5-6), so Cancel stops it
between two steps; a segmentation returns its ``Prediction`` and reports progress through a
callback; :func:`planned` returns a ``Plan``.

A fine-tune is prepared the same way from layers (on the GUI thread, from their snapshot) and from
folders (in the worker, once they are read): :func:`prepare_run` interprets the labels, checks the
model fits, and takes the preset, the plan shown or plans the run; what it holds out and plans is
``core.fine_tuning``'s.
"""

import dataclasses
import functools
from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple, Union

import numpy as np

from ..core.channels import RGB, channel_count, check_channels
from ..core.classes import interpret_labels
from ..core.config import TrainConfig
from ..core.data import Case, load_cases, make_case
from ..core.errors import CVBMInputError
from ..core.fine_tuning import held_out_checks, prepare_fine_tune
from ..core.holdout import Holdout
from ..core.io import list_images, pair_images_labels, read_image
from ..core.planning import Plan, fingerprint, plan
from ..core.predictor import Predictor
from ..core.threads import adapt_threads, use_training_threads
from ..core.training import ProgressEvent, TrainingRun


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


class Prepared(NamedTuple):
    """A run ready to build: how to build it from its config, the config (None: ``planner`` makes it
    in the worker), the data in words and the held-out split."""

    build: Callable[[TrainConfig], TrainingRun]
    config: Optional[TrainConfig]
    planner: Optional[Callable[[], Plan]]
    data: str
    split: Holdout


@dataclasses.dataclass(frozen=True)
class DataRead:
    """The worker has read the folders and prepared the run from them."""

    prepared: Prepared


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


TrainingUpdate = Union[DataRead, Planned, RunReady, StepDone]


def in_background(planner: Callable[..., Plan], *args) -> Plan:
    """``planner(*args)``, its training step measured on the CPU threads a run in the background gets
    (``core.threads``)."""
    use_training_threads(background=True)
    return planner(*args)


def planned(labeled, unlabeled, device, budget_s: float, overrides: dict) -> Plan:
    """``core.planning.plan`` of these cases, :func:`in_background`."""
    return in_background(plan, labeled, unlabeled, device, budget_s, overrides)


@surfacing_errors
def training_updates(prepared: Union[Prepared, Callable[[], Prepared]]) -> Iterator[TrainingUpdate]:
    """Build the ``prepared`` run (a callable, e.g. :class:`FolderRun`, prepares it here first and
    yields :class:`DataRead`) with its config (None: plan it first and yield :class:`Planned`), then
    yield one update per step; stops when the consumer does."""
    if not isinstance(prepared, Prepared):
        prepared = prepared()
        yield DataRead(prepared)
    config = prepared.config
    if config is None:
        made = prepared.planner()
        yield Planned(made)
        config = made.config
    run = prepared.build(config)
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


# -- preparing a run (layers: on the GUI thread; folders: in the worker) --------------------------
class PlanInputs(NamedTuple):
    """What a plan is made from: the cases (images may be stand-ins of their shape) and the settings."""

    labeled: list
    unlabeled: list
    device: object
    budget_s: float
    overrides: dict

    def settings(self) -> tuple:
        """What the plan depends on besides the data."""
        return self.device, self.budget_s, self.overrides


def fresh_plan(shown: Optional[Tuple[tuple, Plan]], inputs: PlanInputs) -> Optional[Plan]:
    """The plan of ``shown`` (the settings it was made with, the plan) if it was made from these inputs."""
    if shown is None:
        return None
    settings, made = shown
    fresh = settings == inputs.settings() and made.fingerprint == fingerprint(inputs.labeled, inputs.unlabeled)
    return made if fresh else None


class RunSettings(NamedTuple):
    """The Fine-tune settings copied at Start: the network's dimension, the config of the model
    fine-tuned (None: a new network), its weights, the hold-out seed, and either the preset's config
    or what a plan is made with (device, budget, overrides; ``shown``: the plan shown, if any)."""

    dim: int
    active: Optional[TrainConfig]
    weights: Optional[dict]
    seed: int
    preset: Optional[TrainConfig]
    planning: Optional[tuple] = None
    shown: Optional[Tuple[tuple, Plan]] = None


def prepare_run(labeled, unlabeled, settings: RunSettings, from_files: bool = False) -> Prepared:
    """The run on these cases, layer snapshots (labels interpreted here as one set; built by
    :func:`run_from_arrays`) or, ``from_files``, ``load_cases``' (interpreted there; built by
    :func:`training_run`): the model checked against the cases, the class count and the corrections
    held out as ``core.fine_tuning.prepare_fine_tune`` decides, and the config (planned: the plan
    shown if it is fresh, else None and a planner). Bad input raises CVBMInputError."""
    active = settings.active
    if not from_files:
        given = None if active is None else active.num_classes
        labels = interpret_labels({case.name: case.label for case in labeled}, given, what="labels layer")
        labeled = [dataclasses.replace(case, label=labels[case.name]) for case in labeled]
    fine = prepare_fine_tune(labeled, unlabeled, active, settings.seed)
    num_classes, split = fine.num_classes, fine.split
    check_model_fits(num_classes, settings.dim, labeled, unlabeled, active)
    config, planner = None, None
    if settings.planning is not None:
        shown = fresh_plan(settings.shown, PlanInputs(labeled, unlabeled, *settings.planning))
        if shown is not None:
            config = dataclasses.replace(shown.config, num_classes=num_classes)
        else:
            planner = functools.partial(in_background, fine.plan, *settings.planning)
    else:
        config = dataclasses.replace(settings.preset, num_classes=num_classes)
        if active is None:  # a preset's new network takes the images' channels
            config = dataclasses.replace(config, **input_channels(labeled))
    builder = training_run if from_files else run_from_arrays
    build = functools.partial(builder, split.train, unlabeled, weights=settings.weights, validation=split.held_out)
    return Prepared(build, config, planner, f"{len(labeled)} labeled + {len(unlabeled)} unlabeled images", split)


def check_model_fits(num_classes: int, dim: int, labeled, unlabeled, active: Optional[TrainConfig]):
    """Refuse cases that a network of ``num_classes`` and ``dim`` (fine-tuned: of config ``active``) cannot
    train on."""
    for case in labeled:
        if case.label.max() >= num_classes:
            raise CVBMInputError(f"'{case.name}' has label values up to {int(case.label.max())} but the model "
                                 f"has {num_classes} classes (0..{num_classes - 1})")
    for case in labeled + unlabeled:
        if dim == 3 and len(case.shape) != 3:
            raise CVBMInputError(f"'{case.name}' is a 2D image but the model is a 3D network: "
                                 f"start from a new 2D network instead")
        if active is not None:
            check_channels(active.in_channels, active.channel_names or (), case.channel_names, f"'{case.name}'")


class Folders(NamedTuple):
    """A run's data on disk: labeled images, their labels, unlabeled images and field-of-view masks
    (non-zero inside), matched by case name ("" when not given); ``all_volumes``: a 4D image's
    volumes are its channels (else its first volume is read)."""

    images: str
    labels: str
    unlabeled: str = ""
    fov: str = ""
    all_volumes: bool = False

    def check(self) -> None:
        """Refuse missing folders and images without a label file, from the file names alone (quick)."""
        pair_images_labels(self.images, self.labels)
        for folder in (self.unlabeled, self.fov):
            if folder:
                list_images(folder)

    def read(self, num_classes: Optional[int] = None) -> Tuple[List[Case], List[Case]]:
        """The labeled and unlabeled cases, as ``cvbm train --mask FOV --channel all`` (or 0) reads them."""
        read = dict(channel=self._channel(), mask_dir=self.fov or None)
        labeled = load_cases(self.images, self.labels, num_classes, **read)
        return labeled, load_cases(self.unlabeled, **read) if self.unlabeled else []

    def _channel(self):
        """``load_cases``' channel: "all", else the first volume (0); colour photographs (judged by the
        first image) keep their colour (None)."""
        if self.all_volumes:
            return "all"
        first = list_images(self.images)[:1]
        return None if first and read_image(first[0], channel="all").channel_names == RGB else 0


class FolderRun(NamedTuple):
    """A run on folders, prepared in its worker: the folders read, then :func:`prepare_run`."""

    folders: Folders
    settings: RunSettings

    def __call__(self) -> Prepared:
        active = self.settings.active
        labeled, unlabeled = self.folders.read(None if active is None else active.num_classes)
        return prepare_run(labeled, unlabeled, self.settings, from_files=True)


# -- run builders (called in the worker thread) ---------------------------------------------------
def run_from_arrays(labeled, unlabeled, config: TrainConfig, weights=None, validation=()) -> TrainingRun:
    """A run on layer snapshots, ``Case``s of the layers' own data (``TrainingDataPanel.snapshot``):
    labeled and validation cases (e.g. a ``core.holdout.split_corrections`` of them) and unlabeled
    ones. The cases of one image share its normalised copy."""
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
    return training_run(labeled_cases, [made_case(c) for c in unlabeled], config, weights, validation_cases)


def training_run(labeled, unlabeled, config: TrainConfig, weights=None, validation=()) -> TrainingRun:
    """A run on made cases (``make_case``'s, e.g. ``load_cases``'); with validation cases it checks
    on them as ``core.fine_tuning.held_out_checks`` says."""
    return TrainingRun(held_out_checks(config, validation), labeled, unlabeled, validation, initial_weights=weights)


def made_case(case: Case, num_classes=None) -> Case:
    """``make_case`` of a snapshot ``case``: validated and normalised."""
    return make_case(case.name, case.image, case.label, annotated=case.annotated, spacing=case.spacing,
                     num_classes=num_classes, channel_names=case.channel_names, valid=case.valid)
