"""A fine-tune on the user's corrections, prepared one way for the Fine-tune widget
(``gui.workers.prepare_run``) and the benchmarks that replay it (``benchmarks/annotation_loop.py``).

The class count is the model's (a new network's: the labels'); part of the corrections is held out
to check the run on (``core.holdout``, by the run's seed); the plan is made from all the corrections
and the unlabeled images, as the plan the widget shows before Start, and keeps what the model fixes
(``core.planning.fine_tune_overrides``) over the settings given; the run checks on the held-out
cases about ``VALIDATIONS`` times.

A trained model is fine-tuned as its own teacher: the callers put :func:`teacher_kept` under the
settings the user gave (spec 5 with the teacher held fixed). On ACDC, pre-training a new teacher on
a few corrected slices at the model's learning rate lowered the Dice on other patients from 68.5 to
52-59; the model kept as the teacher, its student at a tenth of its learning rate, raised the rest of
the corrected volumes and kept the other patients within a point (docs/RESULTS.md, *Fine-tuning
from acdc-cardiac*). Trained models are the bundled ones, checkpoints and what was fine-tuned from
them; the synthetic starter model, and a network trained on the corrections alone, are not.
"""

import dataclasses
from typing import List, NamedTuple, Optional, Sequence

from .classes import infer_num_classes
from .config import TrainConfig
from .data import Case
from .holdout import Holdout, split_corrections
from .planning import Plan, fine_tune_overrides, plan

VALIDATIONS = 10  # held-out checks in a run, about
STUDENT_LR = 0.1  # a kept teacher's student learns at this share of the model's learning rate


def teacher_kept(model: TrainConfig) -> dict:
    """The settings of a fine-tune that keeps the trained model of config ``model`` as its teacher: one
    pre-training step (the teacher is the model as given), the teacher held fixed (``ema_decay=1``:
    every pseudo-label is the model's own) and the student at ``STUDENT_LR`` of the model's learning
    rate; a plan gives the rest of the budget to self-training. Settings the user gives win over them."""
    return {"pretrain_iterations": 1, "ema_decay": 1.0, "lr": model.lr * STUDENT_LR}


class FineTune(NamedTuple):
    """A fine-tune of a model of config ``model`` (None: a new network) on ``labeled`` (all the
    corrections) and ``unlabeled`` cases: its class count and the held-out split of the corrections."""

    labeled: List[Case]
    unlabeled: List[Case]
    model: Optional[TrainConfig]
    num_classes: int
    split: Holdout

    def plan(self, device=None, budget_s: Optional[float] = None, overrides: Optional[dict] = None) -> Plan:
        """``core.planning.plan`` of the run from all the corrections and the unlabeled cases: what the
        model fixes wins over ``overrides``, and the class count over both."""
        keeps = {} if self.model is None else fine_tune_overrides(self.model)
        given = {**(overrides or {}), **keeps, "num_classes": self.num_classes}
        return plan(self.labeled, self.unlabeled, device, budget_s, given)


def prepare_fine_tune(labeled: Sequence[Case], unlabeled: Sequence[Case], model: Optional[TrainConfig],
                      seed: int) -> FineTune:
    """The fine-tune of a model of config ``model`` on ``labeled`` (labels interpreted:
    ``core.classes``) and ``unlabeled`` cases, the corrections held out by ``seed``."""
    num_classes = infer_num_classes((case.label for case in labeled), None if model is None else model.num_classes)
    return FineTune(list(labeled), list(unlabeled), model, num_classes, split_corrections(labeled, seed=seed))


def held_out_checks(config: TrainConfig, held_out: Sequence[Case]) -> TrainConfig:
    """``config`` validating about ``VALIDATIONS`` times in the run when there are ``held_out`` cases."""
    if not held_out:
        return config
    total = config.pretrain_iterations + config.selftrain_iterations
    return dataclasses.replace(config, validate_every=max(1, round(total / VALIDATIONS)))
