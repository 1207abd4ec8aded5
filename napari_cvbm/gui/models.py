"""The models a napari session can segment with, shared by the Segment and Fine-tune widgets.

Entries: the bundled starter model (trained on the sample data), checkpoints the user loaded,
and models fine-tuned in this session. ``changed`` fires with the active name whenever the list
or the active model changes, so every widget shows the same choice.
"""

from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from psygnal import Signal

from ..core.checkpoint import load_model, save_model
from ..core.config import TrainConfig
from ..core.errors import CVBMInputError
from ..core.outputs import refuse_existing

STARTER_PATH = Path(__file__).resolve().parent.parent / "models" / "starter.pt"
STARTER = "starter model (sample data)"


class ModelStore:
    """Named (model, config) pairs with one active entry; the starter loads on first use."""

    changed = Signal(str)

    def __init__(self, starter_path: Path = STARTER_PATH):
        self._models: Dict[str, Tuple[torch.nn.Module, TrainConfig]] = {}
        self._starter_path = Path(starter_path)
        self.active: str = STARTER

    def names(self) -> List[str]:
        names = list(self._models)
        return names if STARTER in names else [STARTER] + names

    def get(self, name: Optional[str] = None) -> Tuple[torch.nn.Module, TrainConfig]:
        """The model and config called ``name`` (default: the active one)."""
        name = name or self.active
        if name == STARTER and name not in self._models:
            self._models[STARTER] = load_model(self._starter_path)
        if name not in self._models:
            raise CVBMInputError(f"no model called {name!r}")
        return self._models[name]

    def add(self, name: str, model: torch.nn.Module, config: TrainConfig, activate: bool = True) -> str:
        self._models[name] = (model.eval(), config)
        if activate:
            self.active = name
        self.changed.emit(self.active)
        return name

    def activate(self, name: str) -> None:
        if name not in self.names():
            raise CVBMInputError(f"no model called {name!r}")
        self.active = name
        self.changed.emit(name)

    def load_file(self, path) -> str:
        """Load a checkpoint (CLI or plugin) and make it active; unreadable files raise CVBMInputError."""
        model, config = load_model(path)
        return self.add(f"file: {Path(path).name}", model, config)

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
