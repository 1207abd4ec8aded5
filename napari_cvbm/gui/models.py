"""The models a napari session can segment with, shared by the Segment and Fine-tune widgets.

Entries: the starter model (trained on the sample data, the default), the bundled models by name
(``core.bundled``), checkpoints the user loaded and models fine-tuned in this session. The starter
and the bundled models load on first use. ``changed`` fires with the active name whenever the list
or the active model changes, so every widget shows the same choice.
"""

from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from psygnal import Signal

from ..core import bundled
from ..core.checkpoint import load_model, save_model
from ..core.config import TrainConfig
from ..core.errors import CVBMInputError
from ..core.model_source import open_model, source_name
from ..core.outputs import refuse_existing

STARTER_PATH = Path(__file__).resolve().parent.parent / "models" / "starter.pt"
STARTER = "starter model (sample data)"


class ModelStore:
    """Named (model, config) pairs with one active entry; the starter and the bundled models (those
    of ``core.bundled`` when the store is made) load on first use."""

    changed = Signal(str)

    def __init__(self, starter_path: Path = STARTER_PATH):
        self._models: Dict[str, Tuple[torch.nn.Module, TrainConfig]] = {}
        self._lazy: Dict[str, Callable[[], Tuple[torch.nn.Module, TrainConfig]]] = {
            STARTER: partial(load_model, Path(starter_path)),
            **{name: partial(bundled.load, name) for name in bundled.names()}}
        self.active: str = STARTER
        self._untrained = {STARTER}  # fine-tuned as a new network is (core.fine_tuning): not kept as the teacher

    def names(self) -> List[str]:
        """The starter, the bundled models, then those loaded or fine-tuned, in the order they came."""
        return list(self._lazy) + [name for name in self._models if name not in self._lazy]

    def is_bundled(self, name: Optional[str] = None) -> bool:
        """Whether ``name`` (default: the active model) is a bundled model (it has a model card)."""
        name = name or self.active
        return name != STARTER and name in self._lazy

    def get(self, name: Optional[str] = None) -> Tuple[torch.nn.Module, TrainConfig]:
        """The model and config called ``name`` (default: the active one)."""
        name = name or self.active
        if name in self._lazy and name not in self._models:
            model, config = self._lazy[name]()
            self._models[name] = (model.eval(), config)
        if name not in self._models:
            raise CVBMInputError(f"no model called {name!r}")
        return self._models[name]

    def is_trained(self, name: Optional[str] = None) -> bool:
        """Whether fine-tuning ``name`` (default: the active model) keeps it as the teacher
        (``core.fine_tuning.teacher_kept``): the bundled models, loaded files and models fine-tuned from
        them are trained; the starter (synthetic sample data) and models fine-tuned from it or from a new
        network on the corrections alone are not."""
        return (name or self.active) not in self._untrained

    def add(self, name: str, model: torch.nn.Module, config: TrainConfig, activate: bool = True,
            trained: bool = True) -> str:
        self._models[name] = (model.eval(), config)
        if not trained:
            self._untrained.add(name)
        if activate:
            self.active = name
        self.changed.emit(self.active)
        return name

    def activate(self, name: str) -> None:
        if name not in self.names():
            raise CVBMInputError(f"no model called {name!r}")
        self.active = name
        self.changed.emit(name)

    def load_file(self, source) -> str:
        """Load a model (``core.model_source.open_model``: a checkpoint of the CLI or plugin, a bioimage.io
        package or a bundled model's name) and make it active; unreadable files raise CVBMInputError."""
        model, config = open_model(source)
        return self.add(source_name(source), model, config)

    def details(self, name: Optional[str] = None) -> str:
        """What the model panel adds to the description of ``name`` (default: the active model): its
        class names and, for a bundled model, its card's hold-out Dice, one line each; "" when there is
        nothing to add."""
        name = name or self.active
        parts = []
        config = self._models[name][1] if name in self._models else None
        classes = config.class_names if config is not None else None
        if self.is_bundled(name):
            card = bundled.card(name)
            classes = classes or card["classes"]
            parts.append(bundled.dice_text(card))
        if classes:
            parts.insert(0, "classes: " + bundled.class_list(classes))
        return "\n".join(p for p in parts if p)

    def save(self, path, name: Optional[str] = None, overwrite: bool = False) -> Path:
        """Write the named (default: active) model as a checkpoint that `cvbm predict` reads.

        An existing file is replaced only with ``overwrite`` (after the user confirmed it)."""
        refuse_existing(path, overwrite)
        model, config = self.get(name)
        return save_model(path, model, config, phase="napari")


MODEL_STORE = ModelStore()  # one per napari session: both widgets read and write it


def active_config() -> Optional[TrainConfig]:
    """The active model's config, or None when it cannot be had (e.g. the starter model is missing)."""
    try:
        return MODEL_STORE.get()[1]
    except CVBMInputError:
        return None
