"""The Fine-tune widget's settings: preset (or a plan from the data), which network to start from,
the plan line and the Advanced form.

The first preset entry plans the run from the data (``core.planning``) within a time budget; the
widget computes the plan in a worker and shows it here (:meth:`TrainingSettingsPanel.show_plan`):
in one line and in the Advanced fields the user has not edited. Edited fields are passed to the
planner as overrides (:meth:`TrainingSettingsPanel.overrides`), so they win.

The Advanced form is generated from :class:`~napari_cvbm.core.config.TrainConfig`: each setting's
widget comes from the field's type and its allowed range (``config.RANGES``), so the form and the
CLI's ``--set`` accept the same values and TrainConfig reports what is wrong with them.
"""

import math
import re
from functools import partial
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch
from magicgui.widgets import ComboBox, Container, FloatSpinBox, LineEdit, SpinBox
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QFormLayout, QLabel, QToolButton, QVBoxLayout, QWidget

from ...core import config as core_config
from ...core import fine_tuning, planning
from ...core.config import FIELD_TYPES, RANGES, TrainConfig
from ...core.device import choose_device
from ...core.errors import CVBMInputError
from .. import models

PLANNED = "Planned from your data"
PRESETS = {PLANNED: None, "CPU laptop (~5 min on the sample data)": "cpu", "GPU (paper settings)": "paper"}
START_ACTIVE, START_NEW_3D, START_NEW_2D = "active model", "new 3D network", "new 2D network"  # item 0 names the model
#: The settings of the Advanced form and their labels, in order.
ADVANCED = {
    "pretrain_iterations": "Pre-training iterations",
    "selftrain_iterations": "Self-training iterations",
    "lr": "Learning rate",
    "ema_decay": "Teacher EMA decay (1: held fixed)",
    "batch_labeled": "Batch size",
    "patch_size": "Patch size",
    "spacing": "Working spacing (mm)",
    "width": "Width (new network)",
    "seed": "Seed",
}
#: Display bounds and steps where the field's own range is open-ended or too fine for a spin box.
SPIN_HINTS = {"lr": dict(min=1e-4, max=1.0, step=0.001, decimals=4), "ema_decay": dict(step=0.01, decimals=3),
              "batch_labeled": dict(max=64, step=2),
              "width": dict(min=2, max=64), "seed": dict(max=2 ** 31 - 1)}
SPIN_MAX = 10 ** 6
BUDGET_MAX_MIN = 24 * 60
NUMBER = {int: r"\d+", float: r"\d+(?:\.\d*)?|\.\d+"}


def _parse_numbers(text: str, dim: int, kind: type, what: str, example: Iterable[str]) -> tuple:
    """``dim`` numbers of ``kind`` separated by commas, spaces or x; raises CVBMInputError otherwise."""
    numbers = re.findall(NUMBER[kind], text)
    if len(numbers) != dim or re.sub(r"[\s,x×]", "", re.sub(NUMBER[kind], "", text)):
        whole = " whole" if kind is int else ""
        raise CVBMInputError(f"{what} must be {dim}{whole} numbers, e.g. {', '.join(list(example)[-dim:])}; "
                             f"got '{text}'")
    return tuple(kind(n) for n in numbers)


def parse_size(text: str, dim: int) -> Tuple[int, ...]:
    """'32, 48, 48' -> (32, 48, 48); raises CVBMInputError unless there are ``dim`` whole numbers."""
    return _parse_numbers(text, dim, int, "patch size", ["32", "48", "48"])


def parse_spacing(text: str, dim: int) -> Optional[Tuple[float, ...]]:
    """'1.25, 1.25, 1.25' -> (1.25, 1.25, 1.25); empty -> None (each image's own spacing)."""
    if not text.strip():
        return None
    return _parse_numbers(text, dim, float, "working spacing", ["2.5", "1.25", "1.25"])


PARSERS = {"patch_size": parse_size, "spacing": parse_spacing}


def shown_value(name: str, values: Mapping):
    """The form's value of setting ``name`` from TrainConfig ``values``: sizes and spacings as text
    (a 2D run's patch is its slice size)."""
    if name == "patch_size":
        return ", ".join(str(s) for s in values.get("slice_size") or values["patch_size"])
    if name == "spacing":
        return "" if values["spacing"] is None else ", ".join(f"{s:g}" for s in values["spacing"])
    return values[name]


def setting_widget(name: str, label: str):
    """A magicgui widget for the TrainConfig field ``name``: a spin box within its range, or a text
    field for a size or a spacing."""
    kind, allowed, hints = FIELD_TYPES[name], RANGES.get(name), dict(SPIN_HINTS.get(name, {}))
    if kind not in (int, float):
        return LineEdit(label=label)
    low = allowed.low if allowed is not None else 0
    high = allowed.high if allowed is not None and math.isfinite(allowed.high) else SPIN_MAX
    decimals = hints.pop("decimals", None)
    options = {"min": kind(low), "max": kind(high), **hints}
    widget = SpinBox(label=label, **options) if kind is int else FloatSpinBox(label=label, **options)
    if decimals is not None:
        widget.native.setDecimals(decimals)
    return widget


class TrainingSettingsPanel(QWidget):
    """Preset or plan, start-from choice, the plan line and the Advanced settings; :meth:`overrides`
    (planned) and :meth:`training_config` (a preset) read them. ``changed`` fires when a setting a
    plan depends on changes (preset, start-from, budget, an edited field, the active model)."""

    changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._preset_key = None
        self.edited = set()  # Advanced fields the user changed since the form was last filled from a preset
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("<b>Settings</b>"))
        self.preset = ComboBox(label="Preset", choices=list(PRESETS))
        self.budget = SpinBox(label="Time budget (min)", min=1, max=BUDGET_MAX_MIN,
                              value=round(planning.DEFAULT_BUDGET_S / 60),
                              tooltip="The plan sizes the step counts to train for about this long")
        self.start_from = ComboBox(label="Start from", choices=[START_ACTIVE, START_NEW_3D, START_NEW_2D])
        self.form = QFormLayout()
        for widget in (self.preset, self.budget, self.start_from):
            self.form.addRow(widget.label, widget.native)
        layout.addLayout(self.form)
        self.plan_line = QLabel(wordWrap=True)
        self.plan_line.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.plan_line)
        self.advanced_toggle = QToolButton(text="Advanced", checkable=True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.RightArrow)
        self.advanced_toggle.toggled.connect(self._show_advanced)
        layout.addWidget(self.advanced_toggle)
        self.fields: Dict[str, object] = {name: setting_widget(name, label) for name, label in ADVANCED.items()}
        for name, widget in self.fields.items():
            widget.changed.connect(partial(self._edited, name))
        self.advanced = Container(widgets=list(self.fields.values()))
        self.advanced.native.layout().setContentsMargins(12, 0, 0, 0)
        self.advanced.visible = False
        layout.addWidget(self.advanced.native)
        self.preset.changed.connect(self.apply_preset)
        self.start_from.changed.connect(self.apply_preset)
        self.budget.changed.connect(lambda *_: self.changed.emit())
        if self.active_config() is None:  # no usable active model (e.g. the starter is missing)
            self.start_from.value = START_NEW_3D
        self.on_model_changed()

    def _show_advanced(self, shown: bool):
        self.advanced.visible = shown
        self.advanced_toggle.setArrowType(Qt.DownArrow if shown else Qt.RightArrow)

    def _edited(self, name: str, *_):
        self.edited.add(name)
        self.changed.emit()

    @property
    def planned(self) -> bool:
        """Whether the run is planned from the data (the first preset entry)."""
        return PRESETS[self.preset.value] is None

    @property
    def from_active(self) -> bool:
        return self.start_from.value == START_ACTIVE

    @staticmethod
    def device() -> torch.device:
        """Where a fine-tune trains: CUDA, then Apple MPS, then the CPU."""
        return choose_device("auto")

    def budget_s(self) -> float:
        return 60.0 * self.budget.value

    def preset_name(self) -> str:
        """The chosen preset; for a planned run, the one the plan starts from on this device."""
        return PRESETS[self.preset.value] or planning.base_preset(self.device())

    @staticmethod
    def active_config() -> Optional[TrainConfig]:
        return models.active_config()

    def dim(self) -> int:
        if self.from_active:
            config = self.active_config()
            return config.dim if config is not None else 3
        return 3 if self.start_from.value == START_NEW_3D else 2

    def model_settings(self) -> dict:
        """What fine-tuning keeps of the active model: its network and, planned, what
        ``core.planning.fine_tune_overrides`` keeps of its input; with a preset, all of its input.
        Empty for a new network; a missing active model raises CVBMInputError."""
        if not self.from_active:
            return {}
        config = models.MODEL_STORE.get()[1]
        keeps = planning.fine_tune_overrides(config)
        return keeps if self.planned else {**keeps, **config.model_input()}

    def on_model_changed(self, *_):
        """Name the active model in the start-from choice and show what it fixes."""
        self.start_from.native.setItemText(0, f"active model: {models.MODEL_STORE.active}")
        self.apply_preset()

    def apply_preset(self, *_):
        """Fill the Advanced form from the preset when it or the network changes (user edits survive
        other changes), with a trained active model kept as the teacher (:meth:`teacher_kept`); when
        fine-tuning, show and lock what the active model fixes."""
        planned = self.planned
        for widget in (self.budget.native, self.form.labelForField(self.budget.native), self.plan_line):
            widget.setVisible(planned)
        try:
            fixed, kept = self.model_settings(), self.teacher_kept()
        except CVBMInputError:
            fixed, kept = {}, {}
        key = (self.preset.value, self.dim(), self.from_active, bool(kept))
        if key != self._preset_key:
            self._preset_key = key
            self._fill({**core_config.preset(self.preset_name(), key[1]).to_dict(), **kept}, ADVANCED)
            self.edited.clear()
        self._fill(fixed, [name for name in ADVANCED if name in fixed])
        for name, widget in self.fields.items():
            widget.enabled = name not in fixed
        self.changed.emit()

    def _fill(self, values: Mapping, names):
        """Show TrainConfig ``values`` in the fields ``names`` (not an edit)."""
        for name in names:
            widget = self.fields[name]
            with widget.changed.blocked():
                widget.value = shown_value(name, values)

    def show_plan(self, plan: planning.Plan):
        """Show ``plan`` in the plan line and in the Advanced fields the user has not edited."""
        self._fill(plan.config.to_dict(), [name for name in ADVANCED if name not in self.edited])
        self.plan_line.setText(f"Plan: {plan.describe()}")

    def values(self, dim: int, names: Optional[Iterable[str]] = None) -> dict:
        """The Advanced settings (all, or ``names``) as TrainConfig values: sizes and spacings parsed,
        the unlabeled batch equal to the labeled, a 2D patch the slice size."""
        names = list(self.fields) if names is None else list(names)
        values = {name: PARSERS[name](self.fields[name].value, dim) if name in PARSERS else self.fields[name].value
                  for name in names}
        if "batch_labeled" in values:
            values["batch_unlabeled"] = values["batch_labeled"]
        if "patch_size" in values and dim == 2:
            values["slice_size"] = values["patch_size"]
        return values

    def overrides(self) -> dict:
        """What a plan must keep: the network's dimension, a trained active model kept as the teacher
        (:meth:`teacher_kept`), the Advanced settings the user edited over it and what the active model
        fixes (:meth:`model_settings`); bad settings raise CVBMInputError."""
        dim = self.dim()
        return {"dim": dim, **self.teacher_kept(), **self.values(dim, self.edited), **self.model_settings()}

    def teacher_kept(self) -> dict:
        """``core.fine_tuning.teacher_kept`` of the active model when fine-tuning a trained one
        (``ModelStore.is_trained``); empty otherwise."""
        if not self.from_active or not models.MODEL_STORE.is_trained():
            return {}
        return fine_tuning.teacher_kept(models.MODEL_STORE.get()[1])

    def weights(self) -> Optional[dict]:
        """A copy of the active model's weights to start from; None for a new network."""
        if not self.from_active:
            return None
        return {k: v.detach().cpu().clone() for k, v in models.MODEL_STORE.get()[0].state_dict().items()}

    def training_config(self, num_classes: int = 2) -> Tuple[TrainConfig, Optional[dict]]:
        """The run's config from the preset (planned: the one the plan starts from) and the form as it
        is, and its initial weights (None for a new network); bad settings raise CVBMInputError."""
        dim = self.dim()
        values = {**self.values(dim), "num_classes": num_classes, **self.model_settings()}
        return core_config.preset(self.preset_name(), dim, **values), self.weights()
