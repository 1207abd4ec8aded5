"""One way to open a model, whatever the user names: every caller (``cvbm predict``, ``cvbm train
--init``, ``Predictor.load``, the napari model store) goes through :func:`open_model`.

A source is, in this order: the name of a bundled model (``core.bundled``, e.g. "acdc-cardiac"), a
bioimage.io package (``core.bioimageio``), or a napari-cvbm checkpoint file (``core.checkpoint``:
the safe loading path). Each returns (model in eval mode on the CPU, its TrainConfig).
"""

from pathlib import Path
from typing import Tuple

import torch

from . import bundled
from .checkpoint import load_model
from .config import TrainConfig
from .errors import CVBMInputError


def _bioimageio():
    """(is_package, load_package) of ``core.bioimageio``, or None where it (or what it needs) is missing."""
    try:
        from .bioimageio import is_package, load_package
    except ImportError:
        return None
    return is_package, load_package


def open_model(source) -> Tuple[torch.nn.Module, TrainConfig]:
    """(model, config) of ``source``: a bundled model's name, a bioimage.io package or a checkpoint path.

    Anything that is none of them raises one CVBMInputError line naming both possibilities (a file,
    a bundled model) and the bundled models."""
    if bundled.is_name(source):
        return bundled.load(source)
    path = Path(source)
    if path.exists():
        package = _bioimageio()
        if package is not None and package[0](path):
            return package[1](path)
        return load_model(path)
    raise CVBMInputError(f"model {str(source)!r} does not exist: it is neither a file (a checkpoint .pt or a "
                         f"bioimage.io package) nor a bundled model's name; {bundled.known_names(str(source))}")


def source_name(source) -> str:
    """How a model from ``source`` is called in lists: a bundled model by its name, a file by ``file: NAME``."""
    return str(source) if bundled.is_name(source) else f"file: {Path(source).name}"
