"""The Fine-tune widget's settings: preset, which network to start from, and the Advanced form.

The Advanced form is generated from :class:`~napari_cvbm.core.config.TrainConfig`: each setting's
widget comes from the field's type and its allowed range (``config.RANGES``), so the form and the
CLI's ``--set`` accept the same values and TrainConfig reports what is wrong with them.
"""

import math
import re
from typing import Dict, Optional, Tuple

from magicgui.widgets import ComboBox, Container, FloatSpinBox, LineEdit, SpinBox
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFormLayout, QLabel, QToolButton, QVBoxLayout, QWidget

from ...core import config as core_config
from ...core.config import FIELD_TYPES, RANGES, TrainConfig
from ...core.errors import CVBMInputError
from .. import models

PRESETS = {"CPU laptop (~5 min on the sample data)": "cpu", "GPU (paper settings)": "paper"}
START_ACTIVE, START_NEW_3D, START_NEW_2D = "active model", "new 3D network", "new 2D network"  # item 0 names the model
#: The settings of the Advanced form and their labels, in order.
ADVANCED = {
    "pretrain_iterations": "Pre-training iterations",
    "selftrain_iterations": "Self-training iterations",
    "lr": "Learning rate",
    "batch_labeled": "Batch size",
    "patch_size": "Patch size",
    "width": "Width (new network)",
    "seed": "Seed",
}
NETWORK_SHAPE = ("patch_size", "width")  # fixed by the model being fine-tuned
#: Display bounds and steps where the field's own range is open-ended or too fine for a spin box.
SPIN_HINTS = {"lr": dict(min=1e-4, max=1.0, step=0.001, decimals=4), "batch_labeled": dict(max=64, step=2),
              "width": dict(min=2, max=64), "seed": dict(max=2 ** 31 - 1)}
SPIN_MAX = 10 ** 6


def parse_size(text: str, dim: int) -> Tuple[int, ...]:
    """'32, 48, 48' -> (32, 48, 48); raises CVBMInputError unless there are ``dim`` whole numbers."""
    numbers = re.findall(r"\d+", text)
    if len(numbers) != dim or re.sub(r"[\d\s,x×]", "", text):
        raise CVBMInputError(f"patch size must be {dim} whole numbers, e.g. "
                             f"{', '.join(['32', '48', '48'][-dim:])}; got '{text}'")
    return tuple(int(n) for n in numbers)


def setting_widget(name: str, label: str):
    """A magicgui widget for the TrainConfig field ``name``: a spin box within its range, or a text
    field for a size."""
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
    """Preset, start-from choice and the Advanced settings; :meth:`training_config` reads them."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._preset_key = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("<b>Settings</b>"))
        self.preset = ComboBox(label="Preset", choices=list(PRESETS))
        self.start_from = ComboBox(label="Start from", choices=[START_ACTIVE, START_NEW_3D, START_NEW_2D])
        form = QFormLayout()
        for widget in (self.preset, self.start_from):
            form.addRow(widget.label, widget.native)
        layout.addLayout(form)
        self.advanced_toggle = QToolButton(text="Advanced", checkable=True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.RightArrow)
        self.advanced_toggle.toggled.connect(self._show_advanced)
        layout.addWidget(self.advanced_toggle)
        self.fields: Dict[str, object] = {name: setting_widget(name, label) for name, label in ADVANCED.items()}
        self.advanced = Container(widgets=list(self.fields.values()))
        self.advanced.native.layout().setContentsMargins(12, 0, 0, 0)
        self.advanced.visible = False
        layout.addWidget(self.advanced.native)
        self.preset.changed.connect(self.apply_preset)
        self.start_from.changed.connect(self.apply_preset)
        if self.active_config() is None:  # no usable active model (e.g. the starter is missing)
            self.start_from.value = START_NEW_3D
        self.on_model_changed()

    def _show_advanced(self, shown: bool):
        self.advanced.visible = shown
        self.advanced_toggle.setArrowType(Qt.DownArrow if shown else Qt.RightArrow)

    @property
    def from_active(self) -> bool:
        return self.start_from.value == START_ACTIVE

    @staticmethod
    def active_config() -> Optional[TrainConfig]:
        try:
            return models.MODEL_STORE.get()[1]
        except CVBMInputError:
            return None

    def dim(self) -> int:
        if self.from_active:
            config = self.active_config()
            return config.dim if config is not None else 3
        return 3 if self.start_from.value == START_NEW_3D else 2

    def on_model_changed(self, *_):
        """Name the active model in the start-from choice and show its network shape."""
        self.start_from.native.setItemText(0, f"active model: {models.MODEL_STORE.active}")
        self.apply_preset()

    def apply_preset(self, *_):
        """Fill the Advanced form from the preset when it or the network changes (user edits survive
        other changes); when fine-tuning, show the active model's fixed network shape."""
        key = (self.preset.value, self.dim(), self.from_active)
        active = self.active_config() if self.from_active else None
        if key != self._preset_key:
            self._preset_key = key
            base = core_config.preset(PRESETS[key[0]], key[1])
            for name in ADVANCED:
                self._show(name, getattr(base, name), base)
        if active is not None:
            for name in NETWORK_SHAPE:
                self._show(name, getattr(active, name), active)
        for name in NETWORK_SHAPE:
            self.fields[name].enabled = active is None

    def _show(self, name: str, value, config: TrainConfig):
        if name == "patch_size":
            value = ", ".join(str(s) for s in config.slice_size or config.patch_size)
        self.fields[name].value = value

    def values(self, dim: int) -> dict:
        """The Advanced settings as TrainConfig values (sizes parsed; the unlabeled batch equals the labeled)."""
        values = {name: widget.value for name, widget in self.fields.items() if name != "patch_size"}
        values["patch_size"] = parse_size(self.fields["patch_size"].value, dim)
        values["batch_unlabeled"] = values["batch_labeled"]
        return values

    def training_config(self, num_classes: int = 2) -> Tuple[TrainConfig, Optional[dict]]:
        """The run's config and initial weights (None for a new network); bad settings raise CVBMInputError."""
        name, dim = PRESETS[self.preset.value], self.dim()
        values = self.values(dim)
        if self.from_active:
            model, config = models.MODEL_STORE.get()
            values.update(config.architecture(), **config.model_input())
            weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            values.update(num_classes=num_classes, slice_size=values["patch_size"] if dim == 2 else None)
            weights = None
        return core_config.preset(name, dim, **values), weights
